//! The files a configuration names, each read once at start: the HTTPS listener's certificate
//! chain and key, and the extra CA trusted for upstream HTTPS (by backends, probes and token
//! endpoints alike). A problem names its key and file, and every one is reported.

use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{SslAcceptor, SslMethod};
use pingora::tls::x509::X509;

use crate::config::{Config, Problem};

/// What was read.
pub struct Files {
    /// The HTTPS listener's TLS settings, one for each worker (none when `tls` is not
    /// configured).
    pub listener: Vec<TlsSettings>,
    /// `upstream_tls.ca_file`, when configured.
    pub upstream_ca: Option<UpstreamCa>,
    /// `state.redis.ca_file` as read (PEM), when configured.
    pub redis_ca: Option<Vec<u8>>,
}

/// The extra CA for upstream HTTPS.
pub struct UpstreamCa {
    /// The file as read, for the token endpoints' HTTP client.
    pub pem: Vec<u8>,
    /// Its certificates plus the system's roots, for Pingora's peers: `ca_file` adds trust, it
    /// never replaces the public roots real Azure endpoints need.
    pub trust: Arc<Box<[X509]>>,
}

/// Reads every file `config` names; all problems at once, or what was read.
pub fn read(config: &Config) -> Result<Files, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, file: &Path, message: String| {
        problems.push(Problem {
            path: key.into(),
            line: None,
            message: format!("{}: {message}", file.display()),
        });
    };
    let workers = super::workers::count(&config.server);
    let listener = config.tls.as_ref().and_then(|tls| {
        let chain = certificates(&tls.cert).map_err(|m| problem("tls.cert", &tls.cert, m));
        let key = private_key(&tls.key).map_err(|m| problem("tls.key", &tls.key, m));
        let (chain, key) = (chain.ok()?, key.ok()?);
        (0..workers)
            .map(|_| acceptor(&chain, &key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| problem("tls.key", &tls.key, m))
            .ok()
    });
    let upstream_ca = config.upstream_ca_file.as_ref().and_then(|file| {
        let (pem, mut certs) = pem_certificates(file)
            .map_err(|m| problem("upstream_tls.ca_file", file, m))
            .ok()?;
        certs.extend(system_roots(file));
        Some(UpstreamCa {
            pem,
            trust: Arc::new(certs.into_boxed_slice()),
        })
    });
    let redis_file = config.redis.as_ref().and_then(|r| r.ca_file.as_ref());
    let redis_ca = redis_file.and_then(|file| {
        let (pem, _) = pem_certificates(file)
            .map_err(|m| problem("state.redis.ca_file", file, m))
            .ok()?;
        Some(pem)
    });
    if problems.is_empty() {
        Ok(Files {
            listener: listener.unwrap_or_default(),
            upstream_ca,
            redis_ca,
        })
    } else {
        Err(problems)
    }
}

/// A file of PEM certificates: as read, and parsed (at least one).
fn pem_certificates(file: &Path) -> Result<(Vec<u8>, Vec<X509>), String> {
    let pem = std::fs::read(file).map_err(|e| e.to_string())?;
    let certs = parse_certificates(&pem)?;
    Ok((pem, certs))
}

fn certificates(file: &Path) -> Result<Vec<X509>, String> {
    pem_certificates(file).map(|(_, certs)| certs)
}

fn parse_certificates(pem: &[u8]) -> Result<Vec<X509>, String> {
    match X509::stack_from_pem(pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err("no PEM certificate in the file".into()),
        Err(e) => Err(format!("not a PEM certificate: {e}")),
    }
}

fn private_key(file: &Path) -> Result<PKey<Private>, String> {
    let pem = std::fs::read(file).map_err(|e| e.to_string())?;
    PKey::private_key_from_pem(&pem).map_err(|e| format!("not a PEM private key: {e}"))
}

/// The listener's TLS settings (Mozilla's intermediate profile, as Pingora's own
/// `TlsSettings::intermediate`), from what was read.
fn acceptor(chain: &[X509], key: &PKey<Private>) -> Result<TlsSettings, String> {
    let build = || {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
        let mut certs = chain.iter();
        if let Some(leaf) = certs.next() {
            b.set_certificate(leaf)?;
        }
        for extra in certs {
            b.add_extra_chain_cert(extra.clone())?;
        }
        b.set_private_key(key)?;
        b.check_private_key()?;
        Ok::<_, pingora::tls::error::ErrorStack>(b)
    };
    build()
        .map(TlsSettings::from)
        .map_err(|e| format!("does not match tls.cert, or cannot be used: {e}"))
}

/// The system's trusted roots (none, with a warning, when no bundle is found).
fn system_roots(extra: &Path) -> Vec<X509> {
    let roots = openssl_probe::probe()
        .cert_file
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|pem| X509::stack_from_pem(&pem).ok())
        .unwrap_or_default();
    if roots.is_empty() {
        log::warn!(
            "no system CA bundle found: upstream HTTPS trusts only {}",
            extra.display()
        );
    }
    roots
}
