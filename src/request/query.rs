//! Query strings, read as a backend reads them: `application/x-www-form-urlencoded` pairs,
//! percent-decoded by [`url::form_urlencoded`]. What the proxy rewrites (a client key taken
//! out, a deployment renamed) is rewritten pair by pair; every other pair goes on as it was sent.

use std::borrow::Cow;

use url::form_urlencoded;

/// The name of the query parameter that carries a key, in any case (`api-key`, `API-KEY`, and
/// percent-encoded spellings such as `api%2Dkey`, which a backend decodes to the same name).
const CLIENT_KEY: &str = "api-key";

/// The first value of parameter `name` (decoded) in `query`.
pub fn param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    form_urlencoded::parse(query?.as_bytes()).find_map(|(k, v)| (k == name).then_some(v))
}

/// Every value of the parameters named in `names` (decoded), with their names.
pub fn params<'q>(
    query: Option<&'q str>,
    names: &'q [&str],
) -> impl Iterator<Item = (Cow<'q, str>, Cow<'q, str>)> + 'q {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(move |(k, _)| names.contains(&k.as_ref()))
}

/// The key a client put in the query (`api-key=KEY`, however spelled), decoded.
pub fn client_key(query: Option<&str>) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find_map(|(k, v)| k.eq_ignore_ascii_case(CLIENT_KEY).then_some(v))
}

/// `query` without the pairs that carry a client key, or `None` when it has none (the query
/// goes on as it is). Quick to say no: a query without a `k` (in any case) or a `%` has none.
pub fn without_client_key(query: &str) -> Option<String> {
    // Run for every request: one scan for a `k` or an escape, before any decoding.
    let may_have = memchr::memchr3(b'%', b'k', b'K', query.as_bytes()).is_some();
    if !may_have || client_key(Some(query)).is_none() {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !carries_key(pair)).collect();
    Some(kept.join("&"))
}

/// Whether one raw `name=value` pair carries a client key.
fn carries_key(pair: &str) -> bool {
    form_urlencoded::parse(pair.as_bytes()).any(|(k, _)| k.eq_ignore_ascii_case(CLIENT_KEY))
}

/// `query` with every value of parameter `name` set to `value`; the other pairs as they were.
pub fn with_param(query: &str, name: &str, value: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let pairs: Vec<Cow<str>> = query
        .split('&')
        .map(|pair| {
            let named = form_urlencoded::parse(pair.as_bytes()).any(|(k, _)| k == name);
            match named {
                true => Cow::Owned(format!("{name}={encoded}")),
                false => Cow::Borrowed(pair),
            }
        })
        .collect();
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_decoded() {
        let q = Some("api-version=2024-10-21&deployment=gpt%2D4o&limit=5");
        assert_eq!(param(q, "deployment").as_deref(), Some("gpt-4o"));
        assert_eq!(param(q, "limit").as_deref(), Some("5"));
        assert_eq!(param(q, "limi"), None);
        assert_eq!(param(None, "limit"), None);
        let both: Vec<_> = params(Some("model=a&x=1&deployment=b"), &["model", "deployment"])
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(both, ["model=a", "deployment=b"]);
    }

    #[test]
    fn a_client_key_is_found_and_taken_out_however_it_is_spelled() {
        for q in [
            "api-key=SECRET&api-version=1",
            "api-version=1&API-KEY=SECRET",
            "api%2Dkey=SECRET&api-version=1",
            "api-version=1&%61pi-key=SECRET",
            "Api-Key=SECRET&api-version=1&api-key=SECRET",
        ] {
            assert_eq!(client_key(Some(q)).as_deref(), Some("SECRET"), "{q}");
            assert_eq!(
                without_client_key(q).as_deref(),
                Some("api-version=1"),
                "{q}"
            );
        }
        assert_eq!(without_client_key("api-version=2024-10-21"), None);
        assert_eq!(without_client_key("api-keys=1&monkey=2"), None);
        assert_eq!(without_client_key("api-key=x").as_deref(), Some(""));
    }

    #[test]
    fn a_parameter_is_renamed_and_the_rest_kept_as_sent() {
        assert_eq!(
            with_param(
                "api-version=1&deployment=rt&x=a%20b",
                "deployment",
                "rt east"
            ),
            "api-version=1&deployment=rt+east&x=a%20b"
        );
    }
}
