//! Where log lines go: to standard error, written by a thread of their own. A request's task
//! formats its line and appends it to a shared buffer (no system call); the writing thread
//! writes what has gathered in one `write`, at most [`GATHER`] after the first line of a batch
//! arrived, or sooner once [`WRITE_AT`] bytes have. Like nginx's `access_log ... buffer=`, but
//! with a delay too short to notice.
//!
//! NOTE: env_logger writes to its target under a lock with a `write` per line and has no
//! background writer; this is the small piece it leaves to us.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the writing thread lets lines gather after the first of a batch.
const GATHER: Duration = Duration::from_millis(20);
/// Bytes gathered that wake the writing thread at once.
const WRITE_AT: usize = 64 * 1024;
/// Bytes gathered past which a request writes them itself (standard error is blocked, the
/// writing thread with it): requests then slow down, as with a blocking `write`, rather than
/// lose lines or hold unbounded memory.
const MAX_GATHERED: usize = 8 * 1024 * 1024;

/// The lines gathered, and the thread that writes them.
struct Gathered {
    lines: Mutex<Vec<u8>>,
    arrived: Condvar,
    /// Held while a batch is taken and written, so that batches leave in order.
    writing: Mutex<()>,
}

static GATHERED: OnceLock<Arc<Gathered>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gathered {
    fn new() -> Arc<Gathered> {
        Arc::new(Gathered {
            lines: Mutex::new(Vec::with_capacity(WRITE_AT)),
            arrived: Condvar::new(),
            writing: Mutex::new(()),
        })
    }

    /// Appends one line; wakes the writer for the first line of a batch or a full buffer.
    fn push(&self, line: &[u8], out: &mut impl Write) {
        let mut lines = lock(&self.lines);
        let first = lines.is_empty();
        lines.extend_from_slice(line);
        let len = lines.len();
        drop(lines);
        if first || len >= WRITE_AT {
            self.arrived.notify_one();
        }
        if len >= MAX_GATHERED {
            self.write_out(out);
        }
    }

    /// Writes everything gathered so far to `out`.
    fn write_out(&self, out: &mut impl Write) {
        let _writing = lock(&self.writing);
        let batch = std::mem::take(&mut *lock(&self.lines));
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }

    /// The writing thread: waits for a line, lets more gather, writes them; for ever.
    fn run(&self, out: &mut impl Write) {
        loop {
            let mut lines = lock(&self.lines);
            while lines.is_empty() {
                lines = self.arrived.wait(lines).unwrap_or_else(|p| p.into_inner());
            }
            if lines.len() < WRITE_AT {
                lines = self
                    .arrived
                    .wait_timeout_while(lines, GATHER, |l| l.len() < WRITE_AT)
                    .map_or_else(|p| p.into_inner().0, |(l, _)| l);
            }
            drop(lines);
            self.write_out(out);
        }
    }
}

/// The log target that hands lines to the writing thread (started on the first call).
pub fn target() -> Lines {
    let gathered = GATHERED.get_or_init(|| {
        let gathered = Gathered::new();
        let writer = gathered.clone();
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run(&mut io::stderr()));
        if let Err(e) = started {
            eprintln!(
                "aoai-proxy: cannot start the log writer ({e}); lines wait for the buffer to fill"
            );
        }
        gathered
    });
    Lines {
        gathered: gathered.clone(),
    }
}

/// Writes every line logged so far. Called before the process exits, which would otherwise
/// end the writing thread with lines still gathered.
pub fn flush() {
    if let Some(gathered) = GATHERED.get() {
        gathered.write_out(&mut io::stderr());
    }
}

/// A log target: hands each record the logger writes to the writing thread. (The logger writes
/// a record whole, under its own lock, so records never interleave.)
pub struct Lines {
    gathered: Arc<Gathered>,
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gathered.push(buf, &mut io::stderr());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output that records each write it gets.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_logged_together_leave_in_one_write_in_order() {
        let gathered = Gathered::new();
        let recorder = Recorder::default();
        let (writer, mut out) = (gathered.clone(), recorder.clone());
        std::thread::spawn(move || writer.run(&mut out));
        let mut direct = Recorder::default();
        for i in 0..100 {
            gathered.push(format!("line {i}\n").as_bytes(), &mut direct);
        }
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&recorder.0).concat().len() < expected.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let writes = lock(&recorder.0).clone();
        assert_eq!(String::from_utf8(writes.concat()).unwrap(), expected);
        assert!(
            writes.len() <= 2,
            "100 lines in {} writes (one, or two if the writer woke between them)",
            writes.len()
        );
        assert!(lock(&direct.0).is_empty(), "no request wrote itself");
    }

    #[test]
    fn flush_writes_what_the_writer_has_not_yet() {
        // No writing thread: only a flush writes.
        let gathered = Gathered::new();
        let mut out = Recorder::default();
        gathered.push(b"one\n", &mut out);
        gathered.push(b"two\n", &mut out);
        assert!(lock(&out.0).is_empty());
        gathered.write_out(&mut out);
        assert_eq!(lock(&out.0).concat(), b"one\ntwo\n");
    }

    #[test]
    fn a_stuck_writer_makes_requests_write_themselves_past_the_limit() {
        let gathered = Gathered::new();
        let mut out = Recorder::default();
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..(MAX_GATHERED / line.len()) {
            gathered.push(&line, &mut out);
        }
        assert_eq!(lock(&out.0).concat().len(), MAX_GATHERED);
        assert!(lock(&gathered.lines).is_empty());
    }
}
