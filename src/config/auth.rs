//! `auth` as serde reads it, and the credential it names: each kind takes only its own keys,
//! with the standard `AZURE_*` variables where the kind has them.

use std::path::PathBuf;

use serde::Deserialize;

use super::raw::Problems;
use super::values::{EnvString, HumanDuration, SecretValue};
use super::{CredentialKind, UserAssigned};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    ManagedIdentity,
    WorkloadIdentity,
    ClientSecret,
    AzureCli,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    kind: RawKind,
    pub(super) scope: Option<EnvString>,
    client_id: Option<EnvString>,
    object_id: Option<EnvString>,
    resource_id: Option<EnvString>,
    tenant_id: Option<EnvString>,
    client_secret: Option<SecretValue>,
    token_file: Option<EnvString>,
    pub(super) refresh_before: Option<HumanDuration>,
}

impl RawAuth {
    /// The credential for `kind`, refusing keys that kind does not use.
    pub(super) fn credential(&self, p: &mut Problems) -> CredentialKind {
        let given = [
            ("client_id", self.client_id.is_some()),
            ("object_id", self.object_id.is_some()),
            ("resource_id", self.resource_id.is_some()),
            ("tenant_id", self.tenant_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("token_file", self.token_file.is_some()),
        ];
        let allowed: &[&str] = match self.kind {
            RawKind::ManagedIdentity => &["client_id", "object_id", "resource_id"],
            RawKind::WorkloadIdentity => &["tenant_id", "client_id", "token_file"],
            RawKind::ClientSecret => &["tenant_id", "client_id", "client_secret"],
            RawKind::AzureCli | RawKind::None => &[],
        };
        let kind_name = match self.kind {
            RawKind::ManagedIdentity => "managed_identity",
            RawKind::WorkloadIdentity => "workload_identity",
            RawKind::ClientSecret => "client_secret",
            RawKind::AzureCli => "azure_cli",
            RawKind::None => "none",
        };
        for (key, present) in given {
            if present && !allowed.contains(&key) {
                p.add(
                    format!("auth.{key}"),
                    format!("is not used with kind {kind_name}"),
                );
            }
        }
        let s = |v: &Option<EnvString>| v.as_ref().map(|v| v.0.clone());
        match self.kind {
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
                        .or_else(|| std::env::var(var).ok())
                        .unwrap_or_else(|| {
                            p.add(
                                format!("auth.{key}"),
                                format!("is required with kind client_secret (or set {var})"),
                            );
                            String::new()
                        })
                };
                let tenant_id = required(s(&self.tenant_id), "tenant_id", "AZURE_TENANT_ID");
                let client_id = required(s(&self.client_id), "client_id", "AZURE_CLIENT_ID");
                let secret = required(
                    self.client_secret
                        .as_ref()
                        .map(|v| v.0.expose().to_string()),
                    "client_secret",
                    "AZURE_CLIENT_SECRET",
                );
                CredentialKind::ClientSecret {
                    tenant_id,
                    client_id,
                    secret: crate::secret::Secret::new(secret),
                }
            }
            RawKind::AzureCli => CredentialKind::AzureCli,
            RawKind::None => CredentialKind::None,
        }
    }
}
