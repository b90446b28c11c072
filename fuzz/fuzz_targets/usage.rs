//! The usage reader (with the model an answer names) and the usage event filter, on any body
//! cut into any chunks: reading is the same whatever the cuts, and the filter gives the same
//! bytes whatever the cuts.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

use aoai_proxy::usage::{UsageEventFilter, UsageReader};

/// `body` in pieces: the first byte says where to cut (a stride), the rest is the body.
fn pieces(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&stride, body)) => (usize::from(stride).max(1), body),
        None => (1, data),
    }
}

fuzz_target!(|data: &[u8]| {
    let (stride, body) = pieces(data);
    for content_type in ["text/event-stream", "application/json"] {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(content_type));
        // With the model read too (traces), as every traced answer is.
        let read = |cut: usize| {
            let reader = UsageReader::for_answer(&headers).expect("a reader");
            let mut reader = reader.reading_model();
            for chunk in body.chunks(cut) {
                reader.feed(&Bytes::copy_from_slice(chunk));
            }
            reader.finish_with_model()
        };
        let whole = read(body.len().max(1));
        if let Some(model) = &whole.1 {
            assert!(!model.is_empty() && model.len() <= 128, "{model:?}");
        }
        // JSON is read from a tail window, streams line by line: for bodies under the window,
        // where the cuts fall must not change what is read.
        if body.len() < 16 << 10 {
            assert_eq!(
                read(stride),
                whole,
                "{content_type}: the cuts changed the usage"
            );
        }
    }
    let filter = |cut: usize| {
        let mut f = UsageEventFilter::default();
        let mut out = Vec::new();
        for chunk in body.chunks(cut) {
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(chunk)));
        }
        out.extend_from_slice(&f.finish());
        out
    };
    let whole = filter(body.len().max(1));
    assert_eq!(
        filter(stride),
        whole,
        "the cuts changed the filtered stream"
    );
    assert!(whole.len() <= body.len());
});
