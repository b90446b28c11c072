//! `usage.include_in_streams`: taking the usage event out of the stream a client gets when the
//! proxy asked for it ([`UsageEventFilter`]; the asking is [`crate::request::rewrite`]'s). The
//! tokens themselves are read by [`super::UsageReader`].

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

/// Takes out of a chat completions stream the one event that `stream_options.include_usage`
/// adds (`choices: []` with a `usage`), for a client that did not ask for it: the proxy asked
/// (`usage.include_in_streams`), so that the tokens are counted.
///
/// Works line by line. A chunk that ends on a line end and mentions no empty `choices` (every
/// chunk but the usage one) passes as it is, not copied; only a line cut by a chunk's end is
/// held until the next chunk completes it.
#[derive(Debug, Default)]
pub struct UsageEventFilter {
    /// The start of a line the last chunk cut off.
    partial: Vec<u8>,
    /// The usage line was just taken out: the blank line that ends its event goes too.
    dropped: bool,
}

/// What marks a candidate line: only the usage chunk has no choices. Searchers built once.
static NO_CHOICES: LazyLock<[memmem::Finder<'static>; 2]> = LazyLock::new(|| {
    [
        memmem::Finder::new(b"\"choices\":[]"),
        memmem::Finder::new(b"\"choices\": []"),
    ]
});

impl UsageEventFilter {
    /// The part of `chunk` the client gets.
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        let whole_lines = self.partial.is_empty() && chunk.last() == Some(&b'\n');
        let candidate = NO_CHOICES.iter().any(|m| m.find(&chunk).is_some());
        if whole_lines && !candidate && !self.dropped {
            return chunk;
        }
        let mut out = BytesMut::with_capacity(chunk.len() + self.partial.len());
        let mut rest = &chunk[..];
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let line = &rest[..=end];
            rest = &rest[end + 1..];
            if self.partial.is_empty() {
                self.pass(line, &mut out);
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(line);
                self.pass(&joined, &mut out);
            }
        }
        self.partial.extend_from_slice(rest);
        out.freeze()
    }

    /// Whatever is left when the stream ends (a last line without its line end).
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.partial))
    }

    fn pass(&mut self, line: &[u8], out: &mut BytesMut) {
        let blank = line.iter().all(|&b| b == b'\r' || b == b'\n');
        if self.dropped && blank {
            self.dropped = false;
            return;
        }
        self.dropped = false;
        if is_usage_event(line) {
            self.dropped = true;
            return;
        }
        out.extend_from_slice(line);
    }
}

/// Whether this stream line is the usage-only chunk: `data: {"choices": [], "usage": {...}}`.
fn is_usage_event(line: &[u8]) -> bool {
    let Some(data) = line.strip_prefix(b"data:") else {
        return false;
    };
    if !NO_CHOICES.iter().any(|m| m.find(data).is_some()) {
        return false;
    }
    #[derive(Deserialize)]
    struct Chunk {
        choices: Vec<serde::de::IgnoredAny>,
        usage: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Chunk>(data.trim_ascii())
        .is_ok_and(|c| c.choices.is_empty() && c.usage.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_event_is_taken_out_and_nothing_else() {
        let events = [
            "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        ];
        let whole: String = events.concat();
        let expected = format!("{}{}", events[0], events[2]);
        // Every way of cutting the stream in two gives the same bytes to the client.
        for cut in 0..whole.len() {
            let mut f = UsageEventFilter::default();
            let mut out = Vec::new();
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(&whole.as_bytes()[..cut])));
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(&whole.as_bytes()[cut..])));
            out.extend_from_slice(&f.finish());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
        }
        // A chunk without the usage event passes as it is.
        let mut f = UsageEventFilter::default();
        let first = Bytes::from_static(events[0].as_bytes());
        assert_eq!(
            f.filter(first.clone()).as_ptr(),
            first.as_ptr(),
            "not copied"
        );
    }
}
