//! How the proxy proves itself to Azure OpenAI: the Entra ID credential that `auth.kind` names
//! ([`CredentialSource`]), the cache that requests read without waiting ([`TokenCache`]), the
//! background task that fills and refreshes it ([`Refresher`]), and what a request asks of them
//! ([`Tokens`]).
//!
//! Requests never call the credential. One [`Refresher`] fetches a token at start, again
//! `auth.refresh_before` ahead of expiry, with backoff after a failure (the current token stays
//! in use while it is valid), and at once when a backend refuses the token with 401.

mod cache;
mod refresher;
mod source;
mod tokens;

pub use cache::{TokenCache, TokenRef, UnusableToken, FORCED_REFRESH_EVERY};
pub use refresher::{backoff, refresh_after, Refresher};
pub use source::{http_client, CredentialError, CredentialSource, HttpClientError};
pub use tokens::Tokens;
