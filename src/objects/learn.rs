//! The objects an answer made: its `id` (and the other objects it says live with it), read from
//! the body on its way to the client, whole JSON or a stream of Responses events.

use http::HeaderMap;
use serde::Deserialize;
use smallvec::SmallVec;

/// The most of a JSON answer kept to read its id (creation answers are small; a Responses
/// answer carries its output, and one above this is not learned from: its id is found again by
/// a search).
const MAX_JSON: usize = 1 << 20;
/// The most of a stream read for its `response.created` event, which comes first.
const MAX_EVENTS: usize = 64 * 1024;

/// Reads the ids of the objects an answer made, fed its body chunk by chunk.
pub struct CreatedReader {
    events: bool,
    buf: Vec<u8>,
    /// The id found in a stream.
    found: Option<String>,
    /// Gave up: too large, or the id is found.
    done: bool,
}

/// The fields of an object that name where it and its relatives live.
#[derive(Deserialize)]
struct Made {
    id: Option<String>,
    /// A run or message lives with its thread (`POST /threads/runs` makes both).
    thread_id: Option<String>,
    /// A batch's results live with it.
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

/// A Responses stream event that carries the response.
#[derive(Deserialize)]
struct Event {
    response: Option<Made>,
}

impl CreatedReader {
    /// A reader for an answer with `headers`.
    pub fn for_answer(headers: &HeaderMap) -> CreatedReader {
        let events = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        CreatedReader {
            events,
            buf: Vec::new(),
            found: None,
            done: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let max = if self.events { MAX_EVENTS } else { MAX_JSON };
        if self.buf.len() + bytes.len() > max {
            self.done = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.events {
            self.scan_events();
        }
    }

    /// The ids read; empty when none could be.
    pub fn finish(self) -> SmallVec<[String; 2]> {
        let mut ids = SmallVec::new();
        if self.events {
            ids.extend(self.found);
            return ids;
        }
        if self.done {
            return ids;
        }
        if let Ok(made) = serde_json::from_slice::<Made>(&self.buf) {
            let all = [
                made.id,
                made.thread_id,
                made.output_file_id,
                made.error_file_id,
            ];
            ids.extend(all.into_iter().flatten().filter(|id| !id.is_empty()));
        }
        ids
    }

    /// Looks through the complete lines read so far for the first event that carries the
    /// response's id.
    fn scan_events(&mut self) {
        let Some(last_newline) = memchr::memrchr(b'\n', &self.buf) else {
            return;
        };
        for line in self.buf[..last_newline].split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let id = serde_json::from_slice::<Event>(data.trim_ascii())
                .ok()
                .and_then(|e| e.response?.id);
            if let Some(id) = id {
                self.found = Some(id);
                self.done = true;
                self.buf = Vec::new();
                return;
            }
        }
        self.buf.drain(..=last_newline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", content_type.parse().unwrap());
        h
    }

    #[test]
    fn a_json_answer_gives_its_id_and_its_relatives() {
        let mut r = CreatedReader::for_answer(&headers("application/json"));
        r.feed(br#"{"id":"run_1","object":"thread.run","#);
        r.feed(br#""thread_id":"thread_1","status":"completed"}"#);
        assert_eq!(r.finish().into_vec(), ["run_1", "thread_1"]);

        let mut r = CreatedReader::for_answer(&headers("application/json"));
        r.feed(br#"{"id":"batch_1","output_file_id":"file-9","error_file_id":null}"#);
        assert_eq!(r.finish().into_vec(), ["batch_1", "file-9"]);
    }

    #[test]
    fn a_stream_gives_the_id_of_its_created_event_across_chunks() {
        let mut r = CreatedReader::for_answer(&headers("text/event-stream"));
        r.feed(b"event: response.created\ndata: {\"type\":\"response.created\",\"resp");
        r.feed(b"onse\":{\"id\":\"resp_7\",\"status\":\"in_progress\"}}\n\n");
        r.feed(b"event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\n");
        assert_eq!(r.finish().into_vec(), ["resp_7"]);
    }

    #[test]
    fn what_cannot_be_read_gives_nothing() {
        let mut r = CreatedReader::for_answer(&headers("application/json"));
        r.feed(b"{\"id\":");
        assert!(r.finish().is_empty());
        let mut r = CreatedReader::for_answer(&headers("application/json"));
        r.feed(&vec![b' '; MAX_JSON + 1]);
        assert!(r.finish().is_empty());
    }
}
