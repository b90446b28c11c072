//! [`CredentialSource`]: builds the `azure_identity` credential that `auth.kind` names, anew
//! for every fetch.
//!
//! Why anew: `azure_identity`'s own cache would hand back the token a backend just refused, and
//! reuses a token until 300 s before expiry whatever margin is asked. Its retries are off too:
//! the [`super::Refresher`] retries on its own schedule.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{Secret as AzureSecret, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use crate::config::{CredentialKind, UserAssigned};

/// Why a credential could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("auth.kind {kind}: {message}")]
    Invalid { kind: &'static str, message: String },
    #[error("auth.kind {kind}: {source}")]
    Azure {
        kind: &'static str,
        source: azure_core::Error,
    },
}

/// Builds the credential `auth` names, as often as a fetch needs one.
#[derive(Clone, Debug)]
pub struct CredentialSource {
    kind: CredentialKind,
    /// The HTTP client for token endpoints when an extra CA is trusted; else the default.
    transport: Option<Transport>,
}

impl CredentialSource {
    /// The source for `kind`, or `None` for `kind: none`. `extra_ca` is the PEM of
    /// `upstream_tls.ca_file`, trusted by token endpoint connections too.
    ///
    /// Builds one credential to check that it can be built (a missing tenant, an unreadable
    /// token file, a managed identity source the crate does not support), without any network
    /// call.
    pub fn new(
        kind: &CredentialKind,
        extra_ca: Option<&[u8]>,
    ) -> Result<Option<Self>, CredentialError> {
        if *kind == CredentialKind::None {
            return Ok(None);
        }
        let transport = extra_ca
            .map(transport_trusting)
            .transpose()
            .map_err(|message| CredentialError::Invalid {
                kind: kind.name(),
                message,
            })?;
        let source = CredentialSource {
            kind: kind.clone(),
            transport,
        };
        source.check()?;
        source.build()?;
        Ok(Some(source))
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            retry: RetryOptions::none(),
            transport: self.transport.clone(),
            ..Default::default()
        }
    }

    /// Start-up checks the crate leaves to the first fetch.
    fn check(&self) -> Result<(), CredentialError> {
        if let CredentialKind::WorkloadIdentity { token_file, .. } = &self.kind {
            let file = token_file
                .clone()
                .or_else(|| std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                .ok_or_else(|| CredentialError::Invalid {
                    kind: "workload_identity",
                    message: "no token file: set auth.token_file or AZURE_FEDERATED_TOKEN_FILE"
                        .into(),
                })?;
            std::fs::read(&file).map_err(|e| CredentialError::Invalid {
                kind: "workload_identity",
                message: format!("cannot read the token file {}: {e}", file.display()),
            })?;
        }
        Ok(())
    }

    /// A new credential.
    pub fn build(&self) -> Result<Arc<dyn TokenCredential>, CredentialError> {
        let kind = self.kind.name();
        let azure = |source| CredentialError::Azure { kind, source };
        let client_options = self.client_options();
        let credential: Arc<dyn TokenCredential> = match &self.kind {
            CredentialKind::None => {
                return Err(CredentialError::Invalid {
                    kind,
                    message: "no credential to build".into(),
                })
            }
            CredentialKind::ManagedIdentity { user_assigned } => {
                let user_assigned_id = user_assigned.clone().map(|id| match id {
                    UserAssigned::ClientId(v) => UserAssignedId::ClientId(v),
                    UserAssigned::ObjectId(v) => UserAssignedId::ObjectId(v),
                    UserAssigned::ResourceId(v) => UserAssignedId::ResourceId(v),
                });
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id,
                    client_options,
                };
                ManagedIdentityCredential::new(Some(options)).map_err(azure)?
            }
            CredentialKind::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                let options = WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    client_id: client_id.clone(),
                    tenant_id: tenant_id.clone(),
                    token_file_path: token_file.clone(),
                };
                WorkloadIdentityCredential::new(Some(options)).map_err(azure)?
            }
            CredentialKind::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                AzureSecret::new(secret.expose().to_string()),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(azure)?,
            CredentialKind::AzureCli => {
                AzureCliCredential::new(Some(AzureCliCredentialOptions::default()))
                    .map_err(azure)?
            }
        };
        Ok(credential)
    }
}

/// An HTTP client for token endpoints that also trusts the CAs in `pem`.
fn transport_trusting(pem: &[u8]) -> Result<Transport, String> {
    let client = http_client(Some(pem)).map_err(|e| e.to_string())?;
    Ok(Transport::new(Arc::new(client)))
}

/// Why the HTTP client for Entra ID endpoints could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("upstream_tls.ca_file: {0}")]
    Ca(#[source] reqwest::Error),
    #[error("cannot build the Entra ID endpoint client: {0}")]
    Build(#[source] reqwest::Error),
}

/// An HTTP client for Entra ID endpoints (tokens, signing keys): bounded waits, no redirects,
/// the system's roots plus the CAs in `extra_ca` (`upstream_tls.ca_file`).
pub fn http_client(extra_ca: Option<&[u8]>) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = extra_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(HttpClientError::Ca)?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(HttpClientError::Build)
}
