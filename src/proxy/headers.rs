//! Header rewriting: what the client sent becomes what a backend gets, and what a backend
//! answered becomes what the client gets.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use crate::balance::Credential;

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

/// Builds the request for one backend from the client's request.
///
/// The path, query, method and other headers stay as the client sent them.
pub fn upstream_request(
    client: &RequestHeader,
    host: &HeaderValue,
    credential: Credential,
    body: &Bytes,
) -> Result<RequestHeader> {
    let had_body = client.headers.contains_key(header::CONTENT_LENGTH)
        || client.headers.contains_key(header::TRANSFER_ENCODING);
    let mut req = client.clone();
    req.set_version(http::Version::HTTP_11);
    // A WebSocket upgrade (the Realtime API) keeps asking for it, hop by hop.
    let upgrade = upgrade_to(client).cloned();
    for name in &DROPPED_REQUEST_HEADERS {
        req.remove_header(name);
    }
    if let Some(protocol) = upgrade {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, protocol)?;
    }
    req.insert_header(header::HOST, host.clone())?;
    match credential {
        Credential::EntraToken(v) => req.insert_header(header::AUTHORIZATION, v)?,
        Credential::ApiKey(v) => req.insert_header("api-key", v)?,
        Credential::Nothing => {}
    }
    if had_body || !body.is_empty() {
        req.insert_header(header::CONTENT_LENGTH, body.len())?;
    }
    Ok(req)
}

/// The request for one backend as it leaves in one write: what [`upstream_request`] builds,
/// serialized as HTTP/1.1 with `body` after it, without building a header map for it (no clone
/// of the client's, no removals, no inserts). `path` replaces the client's when it is given.
/// Header names go in lower case. `None` when the request must go through
/// [`upstream_request`]: an upgrade, or a path that cannot stand in a request line.
pub fn upstream_wire(
    client: &RequestHeader,
    path: Option<&[u8]>,
    host: &HeaderValue,
    credential: &Credential,
    body: &[u8],
) -> Option<BytesMut> {
    let path = path.unwrap_or(client.raw_path());
    if path.is_empty()
        || path.iter().any(|&b| matches!(b, 0 | b'\n' | b'\r' | b' '))
        || upgrade_to(client).is_some()
    {
        return None;
    }
    let mut wire = BytesMut::with_capacity(160 + header_bytes(client) + body.len());
    let mut put = |name: &[u8], value: &[u8]| {
        wire.extend_from_slice(name);
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value);
        wire.extend_from_slice(b"\r\n");
    };
    let had_body = client.headers.contains_key(header::CONTENT_LENGTH)
        || client.headers.contains_key(header::TRANSFER_ENCODING);
    let mut line = BytesMut::with_capacity(path.len() + 24);
    line.extend_from_slice(client.method.as_str().as_bytes());
    line.extend_from_slice(b" ");
    line.extend_from_slice(path);
    line.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &client.headers {
        let ours = name == header::HOST || name == header::CONTENT_LENGTH;
        if !ours && !DROPPED_REQUEST_HEADERS.contains(name) {
            put(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    put(b"host", host.as_bytes());
    match credential {
        Credential::EntraToken(v) => put(b"authorization", v.as_bytes()),
        Credential::ApiKey(v) => put(b"api-key", v.as_bytes()),
        Credential::Nothing => {}
    }
    if had_body || !body.is_empty() {
        let mut n = itoa::Buffer::new();
        put(b"content-length", n.format(body.len()).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(body);
    line.unsplit(wire);
    Some(line)
}

/// The protocol a request asks to upgrade to (`Connection: Upgrade` with `Upgrade: P`).
fn upgrade_to(req: &RequestHeader) -> Option<&HeaderValue> {
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

/// Sets `x-ratelimit-remaining-requests` and `-tokens` to what the client has left under its
/// limits (replacing the backend's, which speak of one instance the client does not see).
pub fn set_remaining(
    head: &mut ResponseHeader,
    requests: Option<u64>,
    tokens: Option<u64>,
) -> pingora::Result<()> {
    if let Some(n) = requests {
        head.insert_header("x-ratelimit-remaining-requests", n.to_string())?;
    }
    if let Some(n) = tokens {
        head.insert_header("x-ratelimit-remaining-tokens", n.to_string())?;
    }
    Ok(())
}

/// The client key a request carries: `api-key: K` or `Authorization: Bearer K`.
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

    #[test]
    fn client_credentials_never_reach_the_backend() {
        let host = HeaderValue::from_static("aoai.example.com");
        let token = HeaderValue::from_static("Bearer entra");
        let body = Bytes::from_static(b"{}");
        let req = upstream_request(&client(), &host, Credential::EntraToken(token), &body).unwrap();
        assert_eq!(req.headers["authorization"], "Bearer entra");
        assert!(req.headers.get("api-key").is_none());
        assert_eq!(req.headers["host"], "aoai.example.com");
        assert_eq!(req.headers["content-length"], "2");
        assert!(req.headers.get("transfer-encoding").is_none());
        assert!(req.headers.get("connection").is_none());
        assert_eq!(req.headers["x-ms-client-request-id"], "abc");
        assert_eq!(
            req.raw_path(),
            b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
        );

        let key = HeaderValue::from_static("backend-key");
        let req = upstream_request(&client(), &host, Credential::ApiKey(key), &body).unwrap();
        assert_eq!(req.headers["api-key"], "backend-key");
        assert!(req.headers.get("authorization").is_none());
    }

    /// The request lines and header lines of a serialized request, in order for comparing,
    /// and the body.
    fn parts(wire: &[u8]) -> (Vec<String>, Vec<u8>) {
        let end = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(wire[..end].to_vec()).unwrap();
        let mut lines: Vec<String> = head.split("\r\n").map(str::to_ascii_lowercase).collect();
        lines[1..].sort();
        (lines, wire[end + 4..].to_vec())
    }

    #[test]
    fn the_wire_form_is_the_built_request_serialized() {
        use pingora::protocols::http::v1::client::http_req_header_to_wire;
        let host = HeaderValue::from_static("aoai.example.com");
        let body = Bytes::from_static(b"{\"model\":\"x\"}");
        for credential in [
            Credential::EntraToken(HeaderValue::from_static("Bearer entra")),
            Credential::ApiKey(HeaderValue::from_static("backend-key")),
            Credential::Nothing,
        ] {
            for (body, path) in [
                (body.clone(), None),
                (
                    Bytes::new(),
                    Some(&b"/openai/deployments/own-name/chat/completions"[..]),
                ),
            ] {
                let wire = upstream_wire(&client(), path, &host, &credential, &body).unwrap();
                let mut built =
                    upstream_request(&client(), &host, credential.clone(), &body).unwrap();
                if let Some(p) = path {
                    built.set_raw_path(p).unwrap();
                }
                let mut expected = http_req_header_to_wire(&built).unwrap();
                expected.extend_from_slice(&body);
                assert_eq!(parts(&wire), parts(&expected));
            }
        }
    }

    #[test]
    fn upgrades_and_unwritable_paths_are_left_to_the_built_request() {
        let host = HeaderValue::from_static("aoai.example.com");
        let mut upgrade = client();
        upgrade.insert_header("connection", "Upgrade").unwrap();
        upgrade.insert_header("upgrade", "websocket").unwrap();
        assert!(upstream_wire(&upgrade, None, &host, &Credential::Nothing, b"").is_none());
        let bad = Some(&b"/a b"[..]);
        assert!(upstream_wire(&client(), bad, &host, &Credential::Nothing, b"").is_none());
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
