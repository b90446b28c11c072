//! Who may use the proxy: the configured clients, each known by the SHA-256 of its key.
//!
//! A presented key is hashed once and looked up in a map, so finding the client takes the same
//! time however many there are, and nothing is compared byte by byte against a stored key: what
//! a timing could reveal is where two digests differ, which says nothing about the key. Plain
//! keys from the file are hashed at load and not kept.

pub mod entra;
pub mod limits;
mod period;
pub mod quota;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ClientKey, ClientLimits, KeyDigest};

/// A client the proxy knows: its name (in logs and metrics) and what it may use.
#[derive(Debug, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    pub limits: ClientLimits,
}

/// The clients, by key digest and by Entra ID.
#[derive(Debug, Default)]
pub struct Clients {
    by_digest: HashMap<KeyDigest, Arc<Client>>,
    /// Lowercase object and application ids.
    by_entra_id: HashMap<String, Arc<Client>>,
    /// Each client once, in the file's order.
    list: Vec<Arc<Client>>,
}

impl Clients {
    /// The table of the configured clients (validated: names, digests and ids are distinct).
    pub fn new(clients: &[ClientKey]) -> Clients {
        let mut table = Clients::default();
        for c in clients {
            let client = Arc::new(Client {
                name: c.name.clone(),
                limits: c.limits.clone(),
            });
            if let Some(digest) = c.digest {
                table.by_digest.insert(digest, client.clone());
            }
            for id in &c.entra_ids {
                table
                    .by_entra_id
                    .insert(id.to_ascii_lowercase(), client.clone());
            }
            table.list.push(client);
        }
        table
    }

    /// Each client once, in the file's order.
    pub fn all(&self) -> &[Arc<Client>] {
        &self.list
    }

    /// The client whose key is `key`.
    pub fn find(&self, key: &[u8]) -> Option<&Arc<Client>> {
        self.by_digest.get(&KeyDigest::of(key))
    }

    /// The client known by one of these Entra IDs (a token's `oid`, `azp`, `appid`), tried in
    /// order.
    pub fn find_entra<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<&Arc<Client>> {
        ids.into_iter()
            .find_map(|id| self.by_entra_id.get(&id.to_ascii_lowercase()))
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
        let client = |name: &str, digest| ClientKey {
            name: name.into(),
            digest: Some(digest),
            entra_ids: vec![format!("id-{name}")],
            limits: ClientLimits::default(),
        };
        let clients = Clients::new(&[client("a", KeyDigest::of(b"key-a")), client("b", b)]);
        let name = |c: Option<&Arc<Client>>| c.map(|c| c.name.clone());
        assert_eq!(name(clients.find(b"key-a")).as_deref(), Some("a"));
        assert_eq!(name(clients.find(b"key-b")).as_deref(), Some("b"));
        assert_eq!(
            name(clients.find_entra(["x", "ID-B"])).as_deref(),
            Some("b")
        );
        assert_eq!(clients.find(b"key-a "), None);
        assert_eq!(clients.find(b""), None);
        assert!(KeyDigest::from_hex("abc").is_none());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_none());
        assert_eq!(format!("{b:?}"), "KeyDigest(*****)");
    }
}
