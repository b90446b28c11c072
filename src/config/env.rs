//! `${NAME}` in string values, and the `AZURE_*` defaults of `auth`: read from the process
//! environment, or from a lookup that a caller puts in its place for one parse (tests), so that
//! nothing ever changes the environment of a running process.

use std::cell::RefCell;

/// Where variables are read while a document is parsed on this thread.
type Lookup = Box<dyn Fn(&str) -> Option<String>>;

thread_local! {
    static LOOKUP: RefCell<Option<Lookup>> = const { RefCell::new(None) };
}

/// Runs `parse` with `lookup` in place of the process environment (on this thread only).
pub(super) fn with_lookup<T>(lookup: Lookup, parse: impl FnOnce() -> T) -> T {
    struct Restore(Option<Lookup>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            LOOKUP.with(|l| *l.borrow_mut() = previous);
        }
    }
    let _restore = Restore(LOOKUP.with(|l| l.borrow_mut().replace(lookup)));
    parse()
}

/// The variable `name`: from the lookup in place, else from the process environment.
pub(super) fn var(name: &str) -> Option<String> {
    LOOKUP
        .with(|l| l.borrow().as_ref().map(|lookup| lookup(name)))
        .unwrap_or_else(|| std::env::var(name).ok())
}

/// Replaces each `${NAME}` in `raw` with `lookup(NAME)`; `$$` is a literal `$`.
pub fn expand(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                // Not the value itself: it may be a secret.
                .ok_or_else(|| "an unclosed `${` (write `$$` for a literal `$`)".to_string())?;
            let name = &tail[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "s3cret".to_string())
    }

    #[test]
    fn substitution() {
        assert_eq!(expand("a-${KEY}-b", env).unwrap(), "a-s3cret-b");
        assert_eq!(expand("$$5 and $x", env).unwrap(), "$5 and $x");
        assert_eq!(
            expand("${MISSING}", env).unwrap_err(),
            "environment variable MISSING is not set"
        );
        // The value may be a secret: the error does not repeat it.
        let unclosed = expand("hunter2${KEY", env).unwrap_err();
        assert!(
            unclosed.contains("unclosed") && !unclosed.contains("hunter2"),
            "{unclosed}"
        );
        assert!(expand("${K-1}", env).is_err());
    }

    #[test]
    fn a_lookup_stands_in_for_the_environment_and_is_restored() {
        let inside = with_lookup(Box::new(env), || (var("KEY"), var("PATH")));
        assert_eq!(inside, (Some("s3cret".into()), None));
        assert_eq!(var("KEY"), std::env::var("KEY").ok());
    }
}
