//! The faults a test programs on a simulated backend ([`Fault`]): answers that come before every
//! route, in place of what the backend would answer.

use std::time::Duration;

/// What a simulated backend does instead of answering normally.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status, these headers and Azure's error body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
    /// Stream this many chunks, then break the connection mid-response.
    BreakStream { after_chunks: usize },
    /// Answer with this status before reading the request body, then close (as Azure does
    /// with a 413 for a body that is too large).
    EarlyStatus(u16),
}

impl Fault {
    /// A 429 with Azure's throttling headers.
    pub fn throttle(retry_after_secs: u64) -> Fault {
        Fault::Status {
            status: 429,
            headers: vec![
                ("retry-after".into(), retry_after_secs.to_string()),
                (
                    "retry-after-ms".into(),
                    (retry_after_secs * 1000).to_string(),
                ),
                ("x-ratelimit-remaining-requests".into(), "0".into()),
            ],
        }
    }
}

/// The message of a fault's Azure error body: a 429 worded as Azure's, else a plain one.
pub(crate) fn fault_message(status: u16, headers: &[(String, String)]) -> String {
    match status {
        429 => {
            let secs = headers
                .iter()
                .find(|(k, _)| k == "retry-after")
                .map_or("1", |(_, v)| v.as_str());
            format!("Requests to the ChatCompletions_Create Operation have exceeded the call rate limit. Please retry after {secs} seconds.")
        }
        _ => format!("Simulated error {status}."),
    }
}
