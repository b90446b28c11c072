//! `auth` as serde reads it, and the [`Auth`] it names: each kind takes only its own keys, with
//! the standard `AZURE_*` variables where the kind has them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::raw::Problems;
use super::validate::duration;
use super::values::{EnvString, HumanDuration, SecretValue};
use super::Secret;
use super::{Auth, CredentialKind, UserAssigned};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    ManagedIdentity,
    WorkloadIdentity,
    ClientSecret,
    AzureCli,
    None,
}

impl RawKind {
    /// The optional keys this kind reads.
    fn keys(self) -> &'static [&'static str] {
        match self {
            RawKind::ManagedIdentity => &["client_id", "object_id", "resource_id"],
            RawKind::WorkloadIdentity => &["tenant_id", "client_id", "token_file"],
            RawKind::ClientSecret => &["tenant_id", "client_id", "client_secret"],
            RawKind::AzureCli | RawKind::None => &[],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    kind: RawKind,
    scope: Option<EnvString>,
    client_id: Option<EnvString>,
    object_id: Option<EnvString>,
    resource_id: Option<EnvString>,
    tenant_id: Option<EnvString>,
    client_secret: Option<SecretValue>,
    token_file: Option<EnvString>,
    refresh_before: Option<HumanDuration>,
    startup_wait: Option<HumanDuration>,
}

impl RawAuth {
    pub(super) fn validate(self, p: &mut Problems) -> Auth {
        let refresh_before = duration(
            p,
            "auth.refresh_before",
            self.refresh_before,
            Auth::DEFAULT_REFRESH_BEFORE,
            Duration::from_secs(1)..=Duration::from_secs(12 * 3600),
        );
        let startup_wait = duration(
            p,
            "auth.startup_wait",
            self.startup_wait,
            Auth::DEFAULT_STARTUP_WAIT,
            Duration::ZERO..=Duration::from_secs(300),
        );
        let scope = self
            .scope
            .as_ref()
            .map_or_else(|| Auth::DEFAULT_SCOPE.to_string(), |s| s.0.clone());
        Auth {
            credential: self.credential(p),
            scope,
            refresh_before,
            startup_wait,
        }
    }

    /// The credential for `kind`, refusing keys that kind does not use.
    fn credential(&self, p: &mut Problems) -> CredentialKind {
        let s = |v: &Option<EnvString>| v.as_ref().map(|v| v.0.clone());
        let credential = match self.kind {
            RawKind::ManagedIdentity => {
                let ids: Vec<UserAssigned> = [
                    s(&self.client_id).map(UserAssigned::ClientId),
                    s(&self.object_id).map(UserAssigned::ObjectId),
                    s(&self.resource_id).map(UserAssigned::ResourceId),
                ]
                .into_iter()
                .flatten()
                .collect();
                if ids.len() > 1 {
                    p.add("auth", "give only one of client_id, object_id, resource_id");
                }
                CredentialKind::ManagedIdentity {
                    user_assigned: ids.into_iter().next(),
                }
            }
            RawKind::WorkloadIdentity => CredentialKind::WorkloadIdentity {
                tenant_id: s(&self.tenant_id),
                client_id: s(&self.client_id),
                token_file: s(&self.token_file).map(PathBuf::from),
            },
            RawKind::ClientSecret => {
                let mut required = |value: Option<String>, key: &str, var: &str| {
                    value
                        .or_else(|| super::env::var(var))
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| {
                            p.add(
                                format!("auth.{key}"),
                                format!("is required with kind client_secret (or set {var})"),
                            );
                            String::new()
                        })
                };
                CredentialKind::ClientSecret {
                    tenant_id: required(s(&self.tenant_id), "tenant_id", "AZURE_TENANT_ID"),
                    client_id: required(s(&self.client_id), "client_id", "AZURE_CLIENT_ID"),
                    secret: Secret::new(required(
                        self.client_secret
                            .as_ref()
                            .map(|v| v.0.expose().to_string()),
                        "client_secret",
                        "AZURE_CLIENT_SECRET",
                    )),
                }
            }
            RawKind::AzureCli => CredentialKind::AzureCli,
            RawKind::None => CredentialKind::None,
        };
        let given = [
            ("client_id", self.client_id.is_some()),
            ("object_id", self.object_id.is_some()),
            ("resource_id", self.resource_id.is_some()),
            ("tenant_id", self.tenant_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("token_file", self.token_file.is_some()),
        ];
        for (key, present) in given {
            if present && !self.kind.keys().contains(&key) {
                p.add(
                    format!("auth.{key}"),
                    format!("is not used with kind {}", credential.name()),
                );
            }
        }
        credential
    }
}
