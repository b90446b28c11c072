//! Connections to backends: made by Pingora's [`TransportConnector`] (TCP, TLS, SNI,
//! verification), kept idle between requests in a list per backend on each worker thread.
//!
//! NOTE: written here rather than taken from Pingora's connection pool, which on every release
//! spawns an idle-watcher task and allocates an `Arc<Mutex<Stream>>`, a oneshot and an LRU
//! node, parks the request task on a lock at checkout, and asks the kernel for the peer's
//! address (`getpeername`) to match the descriptor. Here a checkout is a `Vec::pop` on the
//! worker's own list and a readability probe that costs no system call when nothing arrived
//! (tokio answers from the readiness it already holds), and a connection never leaves the
//! thread whose runtime it is registered with. A sweep each second on each worker closes what
//! outstayed `timeouts.pool_idle` or what the backend closed meanwhile.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::Result;
use tokio::io::AsyncReadExt;

/// How often each worker looks over its idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Makes and keeps connections to backends.
pub struct Upstream {
    transport: TransportConnector,
    /// The most idle connections kept per backend on one worker thread.
    max_idle: usize,
}

/// A connection waiting for its next request.
struct Idle {
    stream: Stream,
    /// When it stops being worth keeping.
    until: Instant,
}

/// One worker's idle connections, by [`Peer::reuse_hash`] (address, TLS and SNI settings).
#[derive(Default)]
struct IdleLists(HashMap<u64, Vec<Idle>, ahash::RandomState>);

thread_local! {
    static IDLE: RefCell<IdleLists> = RefCell::default();
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

impl Upstream {
    pub fn new(max_idle: usize) -> Upstream {
        Upstream {
            transport: TransportConnector::new(Some(ConnectorOptions::new(0))),
            max_idle,
        }
    }

    /// A connection to `peer`: the most recently used idle one that is still open, else a new
    /// one. The flag says whether it was idle (and so may have been closed by the backend a
    /// moment ago without the proxy seeing it yet).
    pub async fn connect(&self, peer: &HttpPeer) -> Result<(Stream, bool)> {
        if let Some(stream) = IDLE.with_borrow_mut(|idle| idle.take(peer.reuse_hash())) {
            return Ok((stream, true));
        }
        self.transport.new_stream(peer).await.map(|s| (s, false))
    }

    /// A new connection to `peer`, never an idle one.
    pub async fn connect_new(&self, peer: &HttpPeer) -> Result<Stream> {
        self.transport.new_stream(peer).await
    }

    /// Takes back the connection of an answer read to its end, to be kept `idle` for the next
    /// request to `peer`; closes it when it cannot carry another request.
    pub async fn release(&self, session: HttpSession, peer: &HttpPeer, idle: Duration) {
        let HttpSession::H1(mut h1) = session else {
            return;
        };
        // What the backend said of keep-alive (`Connection: close`, HTTP/1.0) is read here.
        h1.respect_keepalive();
        let Some(stream) = h1.reuse().await else {
            return;
        };
        let until = Instant::now() + idle;
        let max = self.max_idle;
        IDLE.with_borrow_mut(|lists| lists.put(peer.reuse_hash(), Idle { stream, until }, max));
        if !SWEEPING.replace(true) {
            // On the worker's own runtime: a current-thread runtime per worker (the default,
            // `work_stealing: false`) keeps the sweep on this thread, with this list.
            tokio::spawn(async {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    IDLE.with_borrow_mut(IdleLists::sweep);
                }
            });
        }
    }
}

impl IdleLists {
    fn take(&mut self, key: u64) -> Option<Stream> {
        let list = self.0.get_mut(&key)?;
        let now = Instant::now();
        while let Some(mut idle) = list.pop() {
            if idle.until <= now {
                // The rest are older still.
                list.clear();
                return None;
            }
            if still_open(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    fn put(&mut self, key: u64, idle: Idle, max: usize) {
        let list = self.0.entry(key).or_default();
        if list.len() >= max {
            list.remove(0);
        }
        list.push(idle);
    }

    /// Closes the connections that outstayed their time or that the backend closed.
    fn sweep(&mut self) {
        let now = Instant::now();
        for list in self.0.values_mut() {
            list.retain_mut(|idle| idle.until > now && still_open(&mut idle.stream));
        }
    }
}

/// Whether an idle connection can carry a request: nothing to read on it, neither the end of
/// the stream (the backend closed it) nor bytes nobody asked for. Never waits.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: a task out of its cooperative budget would see a read that is ready as
    // pending, and keep a closed connection.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let stream: pingora::protocols::l4::stream::Stream = client.unwrap().into();
        let stream: Stream = Box::new(stream);
        (stream, accepted.unwrap().0)
    }

    /// Waits (bounded) until the proxy's side of a connection has seen what the backend did.
    async fn settle(stream: &mut Stream) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while still_open(stream) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_taken_back_most_recent_first() {
        let mut lists = IdleLists::default();
        let until = Instant::now() + Duration::from_secs(60);
        let (a, _a) = pair().await;
        let (b, _b) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        lists.put(7, Idle { stream: a, until }, 8);
        lists.put(7, Idle { stream: b, until }, 8);
        assert_eq!(lists.take(7).map(|s| s.id()), Some(b_id));
        assert_eq!(lists.take(7).map(|s| s.id()), Some(a_id));
        assert!(lists.take(7).is_none());
        assert!(lists.take(8).is_none(), "another backend has none");
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_never_handed_out() {
        let mut lists = IdleLists::default();
        let until = Instant::now() + Duration::from_secs(60);
        let (mut closed, server) = pair().await;
        drop(server);
        settle(&mut closed).await;
        let (mut chatty, mut server) = pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        settle(&mut chatty).await;
        let (open, _server) = pair().await;
        let open_id = open.id();
        lists.put(
            1,
            Idle {
                stream: open,
                until,
            },
            8,
        );
        lists.put(
            1,
            Idle {
                stream: chatty,
                until,
            },
            8,
        );
        lists.put(
            1,
            Idle {
                stream: closed,
                until,
            },
            8,
        );
        assert_eq!(lists.take(1).map(|s| s.id()), Some(open_id));
        assert!(lists.take(1).is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_closed_by_take_and_by_the_sweep() {
        let mut lists = IdleLists::default();
        let past = Instant::now();
        let (a, _a) = pair().await;
        let (b, _b) = pair().await;
        lists.put(
            1,
            Idle {
                stream: a,
                until: past,
            },
            8,
        );
        lists.put(
            2,
            Idle {
                stream: b,
                until: past,
            },
            8,
        );
        assert!(lists.take(1).is_none());
        assert!(lists.0[&1].is_empty());
        lists.sweep();
        assert!(lists.0[&2].is_empty());
    }

    #[tokio::test]
    async fn the_oldest_goes_when_the_list_is_full() {
        let mut lists = IdleLists::default();
        let until = Instant::now() + Duration::from_secs(60);
        let mut ids = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (s, server) = pair().await;
            ids.push(s.id());
            servers.push(server);
            lists.put(1, Idle { stream: s, until }, 2);
        }
        let kept: Vec<_> = lists.0[&1].iter().map(|i| i.stream.id()).collect();
        assert_eq!(kept, ids[1..]);
    }
}
