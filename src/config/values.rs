//! Scalar types that validate themselves while the YAML is read, so that a bad value is
//! reported with its key path and line by serde.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

use super::Secret;

/// A string after `${NAME}` substitution from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        super::env::expand(&raw, super::env::var)
            .map(EnvString)
            .map_err(de::Error::custom)
    }
}

/// A secret read from the file (after `${NAME}` substitution), without surrounding
/// whitespace (a key read from a mounted file often ends in a newline); never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretValue(pub Secret);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let EnvString(s) = EnvString::deserialize(d)?;
        let s = s.trim();
        if s.is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err(de::Error::custom(
                "must not contain control characters (it is sent in a header)",
            ));
        }
        Ok(SecretValue(Secret::new(s)))
    }
}

/// A listening address: `host:port`, resolved once at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub String);

impl<'de> Deserialize<'de> for ListenAddr {
    /// An IP address and port (written back in its normal form), or a host name and port, which
    /// is resolved when the proxy starts listening, never when a configuration is checked.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let EnvString(s) = EnvString::deserialize(d)?;
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr(addr.to_string()));
        }
        let named = s.rsplit_once(':').is_some_and(|(host, port)| {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        });
        match named {
            true => Ok(ListenAddr(s)),
            false => Err(de::Error::custom(format!(
                "{s:?} is not a \"host:port\" address (for example 0.0.0.0:8080)"
            ))),
        }
    }
}

/// The scheme of an upstream URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A backend's base URL: `scheme://host[:port]`, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl BackendUrl {
    /// The `Host` header value: the host, with the port when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let default = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

impl std::str::FromStr for BackendUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(format!(
                    "scheme {other:?} is not supported: use https (or http)"
                ))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the URL are not allowed: use api_key".into());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{s:?} has a path or query: give only scheme://host[:port], client paths are forwarded as they are"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("{s:?} has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{s:?} has no port"))?;
        Ok(BackendUrl { scheme, host, port })
    }
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let EnvString(s) = EnvString::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A duration: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (for example 500ms, 5s, 2m)"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            u => return Err(format!("unknown unit {u:?} in {s:?}: use ms, s, m or h")),
        };
        Duration::try_from_secs_f64(secs)
            .map(HumanDuration)
            .map_err(|_| format!("{s:?} is out of range"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NumOrStr::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A byte size: `512`, `64KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB`, decimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (for example 64KiB, 16MiB)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => {
                return Err(format!(
                    "unknown unit {u:?} in {s:?}: use B, KiB, MiB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NumOrStr::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A YAML scalar that may be written as a number or as a string.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Int(u64),
    Float(f64),
    Str(EnvString),
}

impl NumOrStr {
    fn parse<T: std::str::FromStr<Err = String>>(self) -> Result<T, String> {
        match self {
            NumOrStr::Int(n) => n.to_string().parse(),
            NumOrStr::Float(n) => n.to_string().parse(),
            NumOrStr::Str(EnvString(s)) => s.parse(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        let u: BackendUrl = "https://aoai-eastus.openai.azure.com".parse().unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Https, "aoai-eastus.openai.azure.com", 443)
        );
        assert_eq!(u.authority(), "aoai-eastus.openai.azure.com");
        let u: BackendUrl = "http://127.0.0.1:9001/".parse().unwrap();
        assert_eq!(u.authority(), "127.0.0.1:9001");
        assert!("ftp://x".parse::<BackendUrl>().is_err());
        assert!("https://x/openai".parse::<BackendUrl>().is_err());
        assert!("https://u:p@x".parse::<BackendUrl>().is_err());
        assert!("x.openai.azure.com".parse::<BackendUrl>().is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(
            "1.5".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
        assert_eq!("16MiB".parse::<ByteSize>().unwrap().0, 16 << 20);
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
