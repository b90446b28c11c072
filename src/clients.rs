//! Who may use the proxy: the configured clients, each known by the SHA-256 of its key.
//!
//! A presented key is hashed once and looked up in a map, so finding the client takes the same
//! time however many there are, and nothing is compared byte by byte against a stored key: what
//! a timing could reveal is where two digests differ, which says nothing about the key. Plain
//! keys from the file are hashed at load and not kept.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// The SHA-256 of a client key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &[u8]) -> KeyDigest {
        KeyDigest(Sha256::digest(key).into())
    }

    /// A digest written as 64 hexadecimal digits (`key_sha256`).
    pub fn from_hex(hex: &str) -> Option<KeyDigest> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex.trim(), &mut bytes).ok()?;
        Some(KeyDigest(bytes))
    }
}

impl fmt::Debug for KeyDigest {
    /// A digest of a weak key can be brute-forced: it never prints either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(*****)")
    }
}

/// The clients, by key digest.
#[derive(Debug)]
pub struct Clients {
    by_digest: HashMap<KeyDigest, String>,
}

impl Clients {
    /// The table of `(name, digest)` pairs (validated: names and digests are distinct).
    pub fn new<'a>(clients: impl IntoIterator<Item = (&'a str, KeyDigest)>) -> Clients {
        Clients {
            by_digest: clients
                .into_iter()
                .map(|(name, digest)| (digest, name.to_string()))
                .collect(),
        }
    }

    /// The name of the client whose key is `key`.
    pub fn find(&self, key: &[u8]) -> Option<&str> {
        self.by_digest.get(&KeyDigest::of(key)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_found_by_their_key_or_its_digest() {
        // sha256("key-b")
        let b =
            KeyDigest::from_hex("a30534a53b23547377ddccbd1ac85a8a84c13db43493c16e55a6abc7b0eba634")
                .unwrap();
        let clients = Clients::new([("a", KeyDigest::of(b"key-a")), ("b", b)]);
        assert_eq!(clients.find(b"key-a"), Some("a"));
        assert_eq!(clients.find(b"key-b"), Some("b"));
        assert_eq!(clients.find(b"key-a "), None);
        assert_eq!(clients.find(b""), None);
        assert!(KeyDigest::from_hex("abc").is_none());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_none());
        assert_eq!(format!("{b:?}"), "KeyDigest(*****)");
    }
}
