//! Which request paths are forwarded, and in what shape: only those under the configured
//! prefixes (`paths`, by default `/openai/`), in origin form, with no segment that could climb
//! out of them (`.` or `..`, plain or percent-encoded), no encoded `/` or `\`, and no control
//! byte, plain or encoded.
//!
//! Backends are fixed by the configuration and every try gets the backend's own `Host`, so
//! nothing else in a request (its `Host`, an absolute-form target, `X-Forwarded-*`) can steer
//! it anywhere else; this keeps it on the paths an operator meant to expose.

/// Why a request target is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Neither origin nor absolute form, or a path that could climb out of its prefix (400).
    Malformed,
    /// Not under a forwarded prefix (404).
    NotForwarded,
}

/// The path and query to forward for the request target `raw` (an absolute-form target loses
/// its scheme and authority), or why it is refused.
pub fn forwarded<'a>(raw: &'a [u8], prefixes: &[String]) -> Result<&'a [u8], Refused> {
    // Control bytes (a NUL, a tab, DEL) and non-ASCII are not URI characters: HTTP parsers
    // let some through, and a backend might read them otherwise. (No early exit: the loop
    // runs a word of bytes at a time; this runs for every request.)
    let unprintable = raw
        .iter()
        .fold(false, |bad, &b| bad | !(0x21..0x7f).contains(&b));
    if unprintable {
        return Err(Refused::Malformed);
    }
    let target = origin_form(raw).ok_or(Refused::Malformed)?;
    let path = match memchr::memchr(b'?', target) {
        Some(at) => &target[..at],
        None => target,
    };
    // What could climb needs a `\`, a `%` or a `.`; most paths have none of them.
    let escaped = memchr::memchr(b'%', path).is_some();
    let climbs = memchr::memchr(b'\\', path).is_some()
        || (escaped && (has_encoded_separator(path) || has_encoded_control(path)))
        || ((escaped || memchr::memchr(b'.', path).is_some())
            && path.split(|&b| b == b'/').any(is_dot_segment));
    if climbs {
        return Err(Refused::Malformed);
    }
    if !prefixes.iter().any(|p| path.starts_with(p.as_bytes())) {
        return Err(Refused::NotForwarded);
    }
    Ok(target)
}

/// `raw` in origin form (`/path?query`): as it is, or an absolute-form target
/// (`http://host/path?query`) without its scheme and authority. `None` for anything else.
fn origin_form(raw: &[u8]) -> Option<&[u8]> {
    if raw.starts_with(b"/") {
        return Some(raw);
    }
    let scheme = ["http://", "https://"]
        .into_iter()
        .find(|s| raw.len() >= s.len() && raw[..s.len()].eq_ignore_ascii_case(s.as_bytes()))?;
    let rest = &raw[scheme.len()..];
    let path = rest.iter().position(|&b| b == b'/' || b == b'?')?;
    (rest[path] == b'/').then(|| &rest[path..])
}

/// Whether `path` holds a percent-encoded `/` or `\`.
fn has_encoded_separator(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c')
            )
    })
}

/// Whether `path` holds a percent-encoded control byte (`%00`-`%1f`, `%7f`): no Azure path has
/// one, and the HTTP parser encodes a raw one that way before the proxy sees it.
fn has_encoded_control(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'0' | b'1', b'0'..=b'9' | b'a'..=b'f') | (b'7', b'f')
            )
    })
}

/// Whether a path segment is `.` or `..`, with its dots plain or encoded as `%2e`.
fn is_dot_segment(mut segment: &[u8]) -> bool {
    let mut dots = 0;
    while !segment.is_empty() {
        segment = if segment[0] == b'.' {
            &segment[1..]
        } else if segment.len() >= 3 && segment[..3].eq_ignore_ascii_case(b"%2e") {
            &segment[3..]
        } else {
            return false;
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_and_non_ascii_are_refused() {
        let prefixes = vec!["/openai/".to_string()];
        for raw in [
            &b"/openai/\0x"[..],
            b"/openai/a\tb",
            b"/openai/\x7f",
            b"/openai/\xc3\xa9",
            b"/openai/%00x",
            b"/openai/a%0Ab",
            b"/openai/%7F",
        ] {
            assert_eq!(
                forwarded(raw, &prefixes),
                Err(Refused::Malformed),
                "{raw:?}"
            );
        }
    }

    fn check(raw: &str) -> Result<&str, Refused> {
        let prefixes = ["/openai/".to_string()];
        forwarded(raw.as_bytes(), &prefixes).map(|t| std::str::from_utf8(t).unwrap())
    }

    #[test]
    fn azure_openai_paths_pass_as_they_are() {
        for raw in [
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            "/openai/v1/responses",
            "/openai/files/file-abc123/content",
            "/openai/deployments/gpt-4.1-mini/embeddings",
            "/openai/deployments/x/chat/completions?q=a%2Fb",
        ] {
            assert_eq!(check(raw), Ok(raw));
        }
    }

    #[test]
    fn other_paths_are_not_forwarded() {
        for raw in [
            "/",
            "/healthz",
            "/metrics",
            "/v1/chat/completions",
            "/openai",
            "/openaix/",
        ] {
            assert_eq!(check(raw), Err(Refused::NotForwarded), "{raw}");
        }
    }

    #[test]
    fn nothing_climbs_out_of_a_prefix() {
        for raw in [
            "/openai/../healthz",
            "/openai/./deployments/x",
            "/openai/%2e%2e/x",
            "/openai/.%2E/x",
            "/openai/%2E/x",
            "/openai/deployments%2fx/chat/completions",
            "/openai/deployments%5Cx",
            "/openai\\..\\x",
            "/openai/..",
            "*",
            "openai/deployments",
            "",
        ] {
            assert_eq!(check(raw), Err(Refused::Malformed), "{raw:?}");
        }
        // Dots that are part of a name are fine.
        assert!(check("/openai/deployments/a..b/chat").is_ok());
        assert!(check("/openai/.well/x").is_ok());
    }

    #[test]
    fn an_absolute_form_target_loses_its_authority() {
        assert_eq!(
            check("http://evil.example:1234/openai/v1/models?x=1"),
            Ok("/openai/v1/models?x=1")
        );
        assert_eq!(
            check("HTTPS://evil.example/openai/files"),
            Ok("/openai/files")
        );
        assert_eq!(
            check("http://evil.example/healthz"),
            Err(Refused::NotForwarded)
        );
        assert_eq!(check("http://evil.example"), Err(Refused::Malformed));
        assert_eq!(
            check("http://evil.example?/openai/"),
            Err(Refused::Malformed)
        );
        assert_eq!(check("ftp://evil.example/openai/"), Err(Refused::Malformed));
    }
}
