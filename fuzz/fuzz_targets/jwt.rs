//! A client's bearer credential through the Entra ID check: any bytes are refused or name a
//! caller; never a panic. Nothing forged here can pass: the key's private half is not known.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

use aoai_proxy::clients::entra::EntraVerifier;
use aoai_proxy::config::EntraClients;

/// An RSA public key (its private half was thrown away).
const N: &str = "qj8nUY4OWSWfsMZUWHy3Umhty2HXhHQeFkFN4EyQDwJi5dNRj0E_kMNq52HV4wf01kWLYMpj0wPooSfdGwzV7eYVnEgg6N_XgvjtJt_73Pu9ZAAqCkUQtC88Xa5eZUfarXJolzrwOYSPhlf6YIFZgJBpJJUkenwcQVkOpyJmdkErz8E_OFXGzh0aLb_OGL4RxIH90vtDHQ0zF5gQA09LeT4RKak92CYSsHp1RcSO1tOyiuHpqVbvXcOWs6V2Bv1uxc0DnLhRqnrLmgiaetIT9X6l5P4M4h2D2gcQ4lkRcybVKuNE2bG_JJ0P7eN_bPI24GQ1oPDNKlSk40PFrNLzHQ";

fn verifier() -> &'static EntraVerifier {
    static V: OnceLock<EntraVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let v = EntraVerifier::new(&EntraClients {
            tenant: "t".into(),
            audience: "api://aoai-proxy".into(),
            jwks_url: "http://127.0.0.1:1/keys".into(),
            issuers: vec!["https://sts.windows.net/t/".into()],
            refresh: Duration::from_secs(3600),
        });
        let keys = serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "n": N, "e": "AQAB"}]});
        v.store(&serde_json::from_value(keys).expect("a JWKS"));
        v
    })
}

fuzz_target!(|token: &str| {
    let _ = EntraVerifier::looks_like_token(token.as_bytes());
    assert!(verifier().verify(token).is_err(), "a forged token was accepted");
});
