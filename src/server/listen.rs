//! The addresses the proxy listens on, settled before its listeners start. An address already
//! taken is named and ends the start (Pingora would retry it every second, without end and
//! without serving). A port 0 (`listen: [127.0.0.1:0]`) becomes one the system picks: the proxy
//! binds it at once and holds it, so nothing else can take it before the workers bind it too
//! (`SO_REUSEPORT`), and logs it (`listening on ADDR (KEY)`), so tests and scripts find it
//! without guessing a free port.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use tokio::net::TcpSocket;

use crate::config::Config;

/// One listening address, settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// `host:port`, the port the one picked when the file gave 0.
    pub addr: String,
    /// What it resolved to, when it was settled.
    pub resolved: SocketAddr,
    /// The port was picked: every socket on it shares it (`SO_REUSEPORT`).
    pub picked: bool,
}

/// Every address of the proxy, settled, and the sockets that hold the picked ports.
pub struct Addresses {
    pub listen: Vec<Address>,
    pub tls: Option<Address>,
    pub admin: Option<Address>,
    /// Bound, never listening: they only keep the picked ports the proxy's.
    _held: Vec<TcpSocket>,
}

/// Settles the addresses of `config`: each given port is free, each port 0 is picked and held.
/// What is wrong, by key and address.
pub fn settle(config: &Config) -> Result<Addresses, String> {
    let mut held = Vec::new();
    let mut one = |key: &str, addr: &str| -> Result<Address, String> {
        let failed = |e: std::io::Error| format!("{key}: {addr}: {e}");
        let socket_addr = addr
            .to_socket_addrs()
            .map_err(failed)?
            .next()
            .ok_or_else(|| format!("{key}: {addr}: no address"))?;
        if socket_addr.port() != 0 {
            // A socket without SO_REUSEPORT cannot bind where any other socket listens, ours
            // from an earlier start included.
            TcpListener::bind(socket_addr).map_err(failed)?;
            return Ok(Address {
                addr: addr.to_string(),
                resolved: socket_addr,
                picked: false,
            });
        }
        let (socket, picked) = pick(socket_addr).map_err(failed)?;
        log::info!("listening on {picked} ({key})");
        held.push(socket);
        Ok(Address {
            addr: picked.to_string(),
            resolved: picked,
            picked: true,
        })
    };
    let listen = config
        .listen
        .iter()
        .map(|a| one("listen", a))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = config
        .tls
        .as_ref()
        .map(|t| one("tls.listen", &t.listen))
        .transpose()?;
    let admin = config
        .admin
        .as_ref()
        .map(|a| one("admin.listen", a))
        .transpose()?;
    Ok(Addresses {
        listen,
        tls,
        admin,
        _held: held,
    })
}

/// A port the system picks on `addr`'s host, bound and not listening, with `SO_REUSEPORT` (as
/// the workers' sockets will have) and without `SO_REUSEADDR` (which would let other sockets
/// bind it as well).
fn pick(addr: SocketAddr) -> std::io::Result<(TcpSocket, SocketAddr)> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let picked = socket.local_addr()?;
    Ok((socket, picked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> Config {
        Config::from_yaml(&format!(
            "listen: [\"{listen}\"]\nauth: {{kind: none}}\nbackends: [{{url: \"http://127.0.0.1:1\"}}]\n"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_port_0_is_picked_held_and_shared_with_the_workers() {
        let settled = settle(&config("127.0.0.1:0")).unwrap();
        let a = &settled.listen[0];
        assert!(a.picked);
        let addr: SocketAddr = a.addr.parse().unwrap();
        assert_ne!(addr.port(), 0);
        // Held: another socket (std sets SO_REUSEADDR) cannot take it.
        assert!(TcpListener::bind(addr).is_err());
        // A worker's socket can (Pingora's have SO_REUSEADDR and SO_REUSEPORT), and listens.
        let worker = TcpSocket::new_v4().unwrap();
        worker.set_reuseaddr(true).unwrap();
        worker.set_reuseport(true).unwrap();
        worker.bind(addr).unwrap();
        assert!(worker.listen(8).is_ok());
    }

    #[test]
    fn a_taken_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = settle(&config(&addr)).err().unwrap();
        assert!(e.starts_with(&format!("listen: {addr}: ")), "{e}");
    }
}
