//! The objects an answer made: its `id` (and the other objects it says live with it), read from
//! the body on its way to the client, whole JSON or a stream of Responses events.

use http::HeaderMap;
use serde::Deserialize;
use smallvec::SmallVec;

/// The most of a JSON answer kept to read its id (creation answers are small; a Responses
/// answer carries its output, and one above this is not learned from: its id is found again by
/// a search).
const MAX_JSON: usize = 1 << 20;
/// The longest event line kept whole to read it (instructions and tools can make a
/// `response.created` event long).
const MAX_LINE: usize = 1 << 20;
/// How far into a stream its `response.created` event (the first) is looked for.
const MAX_EVENTS: usize = 4 << 20;

/// Reads the ids of the objects an answer made, fed its body chunk by chunk.
pub struct CreatedReader {
    events: bool,
    buf: Vec<u8>,
    /// The id found in a stream.
    found: Option<String>,
    /// Gave up: too large, or the id is found.
    done: bool,
    /// Of a stream, the bytes looked through so far.
    scanned: usize,
}

/// The fields of an object that name where it and its relatives live.
#[derive(Deserialize)]
struct Made {
    id: Option<String>,
    /// Runs and messages are reached through their thread only: their own ids are not kept.
    object: Option<String>,
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
            scanned: 0,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        if !self.events {
            if self.buf.len() + bytes.len() > MAX_JSON {
                self.give_up();
            } else {
                self.buf.extend_from_slice(bytes);
            }
            return;
        }
        self.scanned += bytes.len();
        self.buf.extend_from_slice(bytes);
        self.scan_events();
        // Only an unfinished line is kept: past these bounds, the id is not coming.
        if !self.done && (self.buf.len() > MAX_LINE || self.scanned > MAX_EVENTS) {
            self.give_up();
        }
    }

    /// The id of a stream's response as soon as its event has passed, once.
    pub fn take_found(&mut self) -> Option<String> {
        self.found.take()
    }

    fn give_up(&mut self) {
        self.done = true;
        self.buf = Vec::new();
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
            let lives_with_thread = matches!(
                made.object.as_deref(),
                Some("thread.run" | "thread.message" | "thread.run.step")
            );
            let all = [
                made.id.filter(|_| !lives_with_thread),
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
        assert_eq!(
            r.finish().into_vec(),
            ["thread_1"],
            "a run lives with its thread"
        );

        let mut r = CreatedReader::for_answer(&headers("application/json"));
        r.feed(br#"{"id":"batch_1","output_file_id":"file-9","error_file_id":null}"#);
        assert_eq!(r.finish().into_vec(), ["batch_1", "file-9"]);
    }

    #[test]
    fn a_stream_gives_the_id_of_its_created_event_across_chunks() {
        let mut r = CreatedReader::for_answer(&headers("text/event-stream"));
        r.feed(b"event: response.created\ndata: {\"type\":\"response.created\",\"resp");
        r.feed(b"onse\":{\"id\":\"resp_7\",\"status\":\"in_progress\"}}\n\n");
        assert_eq!(
            r.take_found().as_deref(),
            Some("resp_7"),
            "known as soon as it passed"
        );
        r.feed(b"event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\n");
        assert!(r.finish().is_empty(), "taken already");
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
