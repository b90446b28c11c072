//! Header rules, each written once: what the client sent becomes what a backend gets
//! ([`for_backend`], whichever way the request is then written: [`wire`] or [`framed`]), and what
//! a backend answered becomes what the client gets ([`strip_response`], [`set_remaining`]).

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use crate::balance::Credential;
use crate::clients::limits::Admitted;

/// Request headers that never reach a backend: the client's own credentials, hop-by-hop
/// headers, and framing the proxy sets itself (the body is re-sent whole with a length).
const DROPPED_REQUEST_HEADERS: [HeaderName; 10] = [
    HeaderName::from_static("api-key"),
    header::AUTHORIZATION,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    header::EXPECT,
];

/// Response headers that are about the proxy's connection to the backend, not the client's.
const DROPPED_RESPONSE_HEADERS: [HeaderName; 4] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
];

/// The headers that carry a backend's credential: their values are marked sensitive.
const CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "api-key"];

/// What the proxy puts on a request for one backend besides the client's headers: the
/// backend's `Host`, its credential, and, with traces on, the try's `traceparent` (in place of
/// the client's).
#[derive(Clone, Copy)]
pub struct Added<'a> {
    pub host: &'a HeaderValue,
    pub credential: &'a Credential,
    pub traceparent: Option<&'a str>,
    /// The `traceparent` continues the client's trace, so the client's `tracestate` goes on
    /// with it; in a trace the proxy began, W3C has it dropped.
    pub continues: bool,
}

/// Calls `put` with each header (name in lower case, and value) a backend gets for the
/// client's request `client`, in order: the client's own but for those never forwarded, then
/// the `upgrade` the client asked for (the Realtime API's WebSocket, see [`upgrade_to`]), what
/// the proxy adds (`Host`, the credential in one of [`CREDENTIAL_HEADERS`], a `traceparent`),
/// and the length of the body (`body_len`) the proxy sends.
pub fn for_backend(
    client: &RequestHeader,
    upgrade: Option<&HeaderValue>,
    added: Added<'_>,
    body_len: usize,
    mut put: impl FnMut(&str, &[u8]),
) {
    let had_body = client.headers.contains_key(header::CONTENT_LENGTH)
        || client.headers.contains_key(header::TRANSFER_ENCODING);
    for (name, value) in &client.headers {
        let traced = added.traceparent.is_some();
        let ours = name == header::HOST
            || name == header::CONTENT_LENGTH
            || (traced && name == "traceparent")
            || (traced && !added.continues && name == "tracestate");
        if !ours && !DROPPED_REQUEST_HEADERS.contains(name) {
            put(name.as_str(), value.as_bytes());
        }
    }
    if let Some(protocol) = upgrade {
        put("connection", b"Upgrade");
        put("upgrade", protocol.as_bytes());
    }
    put("host", added.host.as_bytes());
    if let Some(traceparent) = added.traceparent {
        put("traceparent", traceparent.as_bytes());
    }
    match added.credential {
        Credential::EntraToken(v) => put(CREDENTIAL_HEADERS[0], v.as_bytes()),
        Credential::ApiKey(v) => put(CREDENTIAL_HEADERS[1], v.as_bytes()),
        Credential::Nothing => {}
    }
    if had_body || body_len > 0 {
        let mut length = itoa::Buffer::new();
        put("content-length", length.format(body_len).as_bytes());
    }
}

/// The request head for a backend, serialized as HTTP/1.1 (the headers of [`for_backend`],
/// with `path` as the request target), with room for `extra` more bytes after it. `None` when
/// the target cannot stand in a request line, or for an upgrade (see [`framed`]).
pub fn wire(
    client: &RequestHeader,
    path: &[u8],
    added: Added<'_>,
    body_len: usize,
    extra: usize,
) -> Option<BytesMut> {
    if path.is_empty()
        || path.iter().any(|&b| matches!(b, 0 | b'\n' | b'\r' | b' '))
        || upgrade_to(client).is_some()
    {
        return None;
    }
    let mut wire = BytesMut::with_capacity(160 + header_bytes(client) + extra);
    wire.extend_from_slice(client.method.as_str().as_bytes());
    wire.extend_from_slice(b" ");
    wire.extend_from_slice(path);
    wire.extend_from_slice(b" HTTP/1.1\r\n");
    for_backend(client, None, added, body_len, |name, value| {
        wire.extend_from_slice(name.as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value);
        wire.extend_from_slice(b"\r\n");
    });
    wire.extend_from_slice(b"\r\n");
    Some(wire)
}

/// The request head for a backend as Pingora's HTTP/1 writer takes it (the headers of
/// [`for_backend`], with `path` as the request target): for a `HEAD` or an upgrade, whose answer
/// Pingora frames from the request it wrote.
pub fn framed(
    client: &RequestHeader,
    path: &[u8],
    added: Added<'_>,
    body_len: usize,
) -> Result<RequestHeader> {
    let mut req = RequestHeader::build(client.method.clone(), path, Some(client.headers.len()))?;
    let mut result = Ok(());
    let upgrade = upgrade_to(client);
    for_backend(client, upgrade, added, body_len, |name, value| {
        let value = HeaderValue::from_bytes(value).map(|mut v| {
            v.set_sensitive(CREDENTIAL_HEADERS.contains(&name));
            v
        });
        if let (Ok(()), Ok(value)) = (&result, value) {
            result = req.append_header(name.to_string(), value).map(|_| ());
        }
    });
    result.map(|()| req)
}

/// The protocol a request asks to upgrade to (`Connection: Upgrade` with `Upgrade: P`).
pub fn upgrade_to(req: &RequestHeader) -> Option<&HeaderValue> {
    let asks = req.headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| req.headers.get(header::UPGRADE)).flatten()
}

/// Makes a backend's response header the client's: removes its hop-by-hop headers.
pub fn strip_response(resp: &mut ResponseHeader) {
    for name in &DROPPED_RESPONSE_HEADERS {
        resp.remove_header(name);
    }
}

/// The total size of the request headers as sent (names, values and separators).
pub fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.raw_path().len()
}

/// What the proxy puts on every answer a client gets, the backend's or its own: what the client
/// has left under its limits (`x-ratelimit-remaining-*`), the fallback deployment that
/// answered (`x-aoai-proxy-fallback`), and what the response cache did (`x-aoai-proxy-cache`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Told<'a> {
    pub left: Option<&'a Admitted>,
    pub fallback: Option<&'a str>,
    pub cache: Option<&'static str>,
}

impl Told<'_> {
    pub fn put_on(&self, head: &mut ResponseHeader) -> Result<()> {
        if let Some(l) = self.left {
            set_remaining(head, l.remaining_requests, l.remaining_tokens)?;
        }
        if let Some(deployment) = self.fallback {
            head.insert_header("x-aoai-proxy-fallback", deployment)?;
        }
        if let Some(cache) = self.cache {
            head.insert_header("x-aoai-proxy-cache", cache)?;
        }
        Ok(())
    }
}

/// Sets `x-ratelimit-remaining-requests` and `-tokens` to what the client has left under its
/// limits (replacing the backend's, which speak of one instance the client does not see).
pub fn set_remaining(
    head: &mut ResponseHeader,
    requests: Option<u64>,
    tokens: Option<u64>,
) -> Result<()> {
    if let Some(n) = requests {
        head.insert_header("x-ratelimit-remaining-requests", n.to_string())?;
    }
    if let Some(n) = tokens {
        head.insert_header("x-ratelimit-remaining-tokens", n.to_string())?;
    }
    Ok(())
}

/// The client key a request carries in its headers: `api-key: K` or `Authorization: Bearer K`.
pub fn client_key(req: &RequestHeader) -> Option<&[u8]> {
    if let Some(v) = req.headers.get("api-key") {
        return Some(v.as_bytes());
    }
    let auth = req.headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = auth.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| auth[7..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added<'a>(host: &'a HeaderValue, credential: &'a Credential) -> Added<'a> {
        Added {
            host,
            credential,
            traceparent: None,
            continues: false,
        }
    }

    #[test]
    fn a_traceparent_of_the_try_replaces_the_clients() {
        let host = HeaderValue::from_static("aoai.example.com");
        let mut traced = client();
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        traced.insert_header("traceparent", theirs).unwrap();
        let ours = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        traced.insert_header("tracestate", "vendor=1").unwrap();
        let with = Added {
            traceparent: Some(ours),
            ..added(&host, &Credential::Nothing)
        };
        let head = wire(&traced, b"/openai/x", with, 0, 0).unwrap();
        let text = String::from_utf8_lossy(&head);
        assert!(text.contains(&format!("traceparent: {ours}\r\n")), "{text}");
        assert!(!text.contains(theirs), "{text}");
        assert!(
            !text.contains("vendor=1"),
            "a new trace drops the client's state: {text}"
        );
        let continued = Added {
            continues: true,
            ..with
        };
        let head = wire(&traced, b"/openai/x", continued, 0, 0).unwrap();
        assert!(String::from_utf8_lossy(&head).contains("tracestate: vendor=1"));
        // Without traces, the client's goes on as sent.
        let plain = wire(
            &traced,
            b"/openai/x",
            added(&host, &Credential::Nothing),
            0,
            0,
        );
        assert!(String::from_utf8_lossy(&plain.unwrap()).contains(theirs));
    }

    fn client() -> RequestHeader {
        let mut r = RequestHeader::build(
            "POST",
            b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            None,
        )
        .unwrap();
        r.insert_header("host", "proxy.local").unwrap();
        r.insert_header("api-key", "client-key").unwrap();
        r.insert_header("authorization", "Bearer client-token")
            .unwrap();
        r.insert_header("transfer-encoding", "chunked").unwrap();
        r.insert_header("x-ms-client-request-id", "abc").unwrap();
        r.insert_header("connection", "keep-alive").unwrap();
        r
    }

    /// The header lines of a serialized head, sorted, and its request line.
    fn lines(wire: &[u8]) -> (String, Vec<String>) {
        let text = String::from_utf8(wire.to_vec()).unwrap();
        let mut lines: Vec<String> = text
            .trim_end()
            .split("\r\n")
            .map(str::to_ascii_lowercase)
            .collect();
        let first = lines.remove(0);
        lines.sort();
        (first, lines)
    }

    #[test]
    fn client_credentials_never_reach_the_backend() {
        let host = HeaderValue::from_static("aoai.example.com");
        let path = client().raw_path().to_vec();
        for credential in [
            Credential::EntraToken(HeaderValue::from_static("Bearer entra")),
            Credential::ApiKey(HeaderValue::from_static("backend-key")),
        ] {
            let wire = wire(&client(), &path, added(&host, &credential), 2, 0).unwrap();
            let (first, headers) = lines(&wire);
            assert_eq!(
                first,
                "post /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 http/1.1"
            );
            let expected_credential = match &credential {
                Credential::EntraToken(_) => "authorization: bearer entra",
                _ => "api-key: backend-key",
            };
            assert_eq!(
                headers,
                [
                    expected_credential,
                    "content-length: 2",
                    "host: aoai.example.com",
                    "x-ms-client-request-id: abc",
                ]
            );
        }
    }

    #[test]
    fn both_ways_of_writing_send_the_same_headers() {
        use pingora::protocols::http::v1::client::http_req_header_to_wire;
        let host = HeaderValue::from_static("aoai.example.com");
        let token = HeaderValue::from_static("Bearer entra");
        let credential = Credential::EntraToken(token);
        let path = b"/openai/deployments/own/chat/completions";
        let framed = framed(&client(), path, added(&host, &credential), 7).unwrap();
        assert!(framed.headers["authorization"].is_sensitive());
        let from_pingora = http_req_header_to_wire(&framed).unwrap();
        let ours = wire(&client(), path, added(&host, &credential), 7, 0).unwrap();
        assert_eq!(lines(&from_pingora), lines(&ours));
    }

    #[test]
    fn an_upgrade_is_asked_for_again_hop_by_hop() {
        let host = HeaderValue::from_static("aoai.example.com");
        let mut upgrade = client();
        upgrade.insert_header("connection", "Upgrade").unwrap();
        upgrade.insert_header("upgrade", "websocket").unwrap();
        let req = framed(
            &upgrade,
            b"/openai/realtime",
            added(&host, &Credential::Nothing),
            0,
        )
        .unwrap();
        assert_eq!(req.headers["connection"], "Upgrade");
        assert_eq!(req.headers["upgrade"], "websocket");
        assert!(wire(&client(), b"/a b", added(&host, &Credential::Nothing), 0, 0).is_none());
    }

    #[test]
    fn client_keys_are_found_in_either_header() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(client_key(&r), None);
        r.insert_header("authorization", "bearer  k1 ").unwrap();
        assert_eq!(client_key(&r), Some(&b"k1"[..]));
        r.insert_header("api-key", "k2").unwrap();
        assert_eq!(client_key(&r), Some(&b"k2"[..]));
    }
}
