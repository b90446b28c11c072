//! `clients` and `client_auth` as validated: who is known by a key (or its digest) and who by
//! an Entra ID, with the limits each may use, and the tenant their tokens are checked against.

use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use super::raw::{Problems, RawClient, RawClientAuth, RawEntraClients};
use super::spend;
use super::validate::{duplicates, duration, DAY};
use super::KeyDigest;
use super::{ClientKey, ClientLimits, EntraClients};

/// The client name that stands for "no client" in the metrics' `client` label and the access
/// log: no client may be named so.
pub const NO_CLIENT: &str = "-";

/// Entra ID clients need both halves: the tenant to check tokens against, and who is who.
pub(super) fn client_auth_is_whole(
    clients: Option<&[RawClient]>,
    client_auth: Option<&RawClientAuth>,
    p: &mut Problems,
) {
    let entra_ids = clients.into_iter().flatten().any(|c| c.entra_ids.is_some());
    let entra_auth = client_auth.is_some_and(|a| a.entra.is_some());
    if entra_auth && clients.is_none() {
        p.add(
            "client_auth.entra",
            "needs `clients`, with the Entra IDs each client is known by (entra_ids): without `clients` the proxy lets everyone in",
        );
    }
    if entra_ids && !entra_auth {
        p.add(
            "clients",
            "entra_ids need client_auth.entra (the tenant and audience their tokens are checked against)",
        );
    }
}

pub(super) fn clients(list: Vec<RawClient>, p: &mut Problems) -> Vec<ClientKey> {
    if list.is_empty() {
        p.add(
            "clients",
            "an empty list would refuse every request: remove `clients` to let everyone in, or add a key",
        );
    }
    let clients: Vec<ClientKey> = list
        .into_iter()
        .enumerate()
        .map(|(i, c)| client(&format!("clients[{i}]"), c, p))
        .collect();
    for name in duplicates(clients.iter().map(|c| c.name.as_str())) {
        p.add("clients", format!("two clients are named {name:?}"));
    }
    let mut digests = HashSet::new();
    let mut ids = HashSet::new();
    for c in &clients {
        if c.digest.is_some_and(|d| !digests.insert(d)) {
            p.add(
                "clients",
                format!("client {:?} has the key of another client", c.name),
            );
        }
        for id in &c.entra_ids {
            if !ids.insert(id.to_ascii_lowercase()) {
                p.add(
                    "clients",
                    format!("the Entra ID {id:?} is given to two clients"),
                );
            }
        }
    }
    clients
}

/// One client: how it is known (a key, its digest, Entra IDs) and its limits.
fn client(key: &str, c: RawClient, p: &mut Problems) -> ClientKey {
    let entra_ids: Vec<String> = c
        .entra_ids
        .iter()
        .flatten()
        .map(|id| id.0.trim().to_ascii_lowercase())
        .collect();
    if c.entra_ids.as_ref().is_some_and(|ids| ids.is_empty())
        || entra_ids.iter().any(String::is_empty)
    {
        p.add(
            format!("{key}.entra_ids"),
            "give at least one object or application id, none empty",
        );
    }
    let digest = if c.key.is_none() && c.key_sha256.is_none() && !entra_ids.is_empty() {
        None
    } else {
        client_digest(key, &c, p)
    };
    let requests_per_minute = c.requests_per_minute.map(|n| {
        NonZeroU32::new(n).unwrap_or_else(|| {
            p.add(
                format!("{key}.requests_per_minute"),
                "must be at least 1 (leave it out for no limit)",
            );
            NonZeroU32::MIN
        })
    });
    let tokens_per_minute = c.tokens_per_minute.map(|n| {
        NonZeroU64::new(n).unwrap_or_else(|| {
            p.add(
                format!("{key}.tokens_per_minute"),
                "must be at least 1 (leave it out for no limit)",
            );
            NonZeroU64::MIN
        })
    });
    let deployments = c.deployments.map(|list| {
        if list.is_empty() {
            p.add(
                format!("{key}.deployments"),
                "an empty list would allow no deployment: leave it out to allow every one",
            );
        }
        list.into_iter().map(|d| d.0).collect()
    });
    if c.name.0 == NO_CLIENT || c.name.0.is_empty() {
        p.add(
            format!("{key}.name"),
            "give the client a name (`-` stands for requests without a client in metrics)",
        );
    }
    ClientKey {
        name: c.name.0,
        digest,
        entra_ids,
        limits: ClientLimits {
            requests_per_minute,
            tokens_per_minute,
            deployments,
            token_quota: c.token_quota.map(|q| spend::token_quota(key, q, p)),
            budget: c.budget.map(|b| spend::budget(key, b, p)),
        },
    }
}

pub(super) fn entra_clients(e: RawEntraClients, p: &mut Problems) -> EntraClients {
    let tenant = e.tenant.0.trim().to_string();
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        p.add(
            "client_auth.entra.tenant",
            "give the tenant's id (a GUID) or its domain",
        );
    }
    if e.audience.0.trim().is_empty() {
        p.add(
            "client_auth.entra.audience",
            "give the audience the tokens are issued for (the app's id or its api:// URI)",
        );
    }
    let jwks_url = match e.jwks_url {
        Some(u) => {
            if url::Url::parse(&u.0).map_or(true, |u| !matches!(u.scheme(), "https" | "http")) {
                p.add("client_auth.entra.jwks_url", "must be an http(s) URL");
            }
            u.0
        }
        None => EntraClients::default_jwks_url(&tenant),
    };
    let issuers = match e.issuers {
        Some(list) if list.is_empty() => {
            p.add(
                "client_auth.entra.issuers",
                "give at least one issuer, or leave it out for the tenant's own",
            );
            Vec::new()
        }
        Some(list) => list.into_iter().map(|i| i.0).collect(),
        None => EntraClients::default_issuers(&tenant),
    };
    EntraClients {
        refresh: duration(
            p,
            "client_auth.entra.refresh",
            e.refresh,
            EntraClients::DEFAULT_REFRESH,
            Duration::from_secs(60)..=DAY,
        ),
        tenant,
        audience: e.audience.0.trim().to_string(),
        jwks_url,
        issuers,
    }
}

/// A client's key digest: the SHA-256 of `key`, or `key_sha256` as given; exactly one of them.
/// `None` when that is not so (reported).
fn client_digest(key: &str, c: &RawClient, p: &mut Problems) -> Option<KeyDigest> {
    match (&c.key, &c.key_sha256) {
        (Some(k), None) => Some(KeyDigest::of(k.0.expose().as_bytes())),
        (None, Some(hex)) => match KeyDigest::from_hex(&hex.0) {
            Some(d) if d == KeyDigest::of(b"") => {
                p.add(
                    format!("{key}.key_sha256"),
                    "is the SHA-256 of an empty key: it would let in a request with an empty api-key",
                );
                None
            }
            Some(d) => Some(d),
            None => {
                p.add(
                    format!("{key}.key_sha256"),
                    "must be 64 hexadecimal digits: the SHA-256 of the key (sha256sum prints it)",
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            p.add(key, "give key or key_sha256, not both");
            None
        }
        (None, None) => {
            p.add(key, "give the client's key, or key_sha256");
            None
        }
    }
}
