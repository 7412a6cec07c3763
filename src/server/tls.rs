//! HTTPS: the server's certificate and key, loaded at start-up (a bad one stops wharf there) and
//! reloaded when their files change or on SIGHUP. A reload only changes what new handshakes
//! present: open connections keep going. Knows files and rustls, not requests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::reload::{Reload, WatchedFiles};
use crate::config::TlsConfig;

/// Why the certificate and key cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {}: {source}", file.display())]
    Certificate {
        file: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS certificate {}: no PEM certificate in the file", file.display())]
    NoCertificate { file: PathBuf },
    #[error("TLS key {}: {source}", file.display())]
    KeyFile {
        file: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS key {}: {source}", file.display())]
    Key {
        file: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS key {} does not belong to certificate {}: {source}", key.display(), cert.display())]
    Mismatch {
        key: PathBuf,
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS: {0}")]
    Protocol(#[source] rustls::Error),
}

/// The TLS side of the listener.
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadingCertificate>,
}

impl Tls {
    /// Loads the certificate chain and key, or says precisely why they cannot serve.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let watched = WatchedFiles::new(vec![config.cert.clone(), config.key.clone()]);
        let certificate = Arc::new(ReloadingCertificate {
            cert: config.cert.clone(),
            key: config.key.clone(),
            current: RwLock::new(Arc::new(load_pair(&config.cert, &config.key, &provider)?)),
            watched,
            provider: provider.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certificate,
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

impl Reload for Tls {
    fn reload(&self, forced: bool) {
        self.certificate.reload(forced);
    }
}

#[derive(Debug)]
struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    watched: WatchedFiles,
    provider: Arc<CryptoProvider>,
}

impl ReloadingCertificate {
    /// Loads the files again if they changed (or if `forced`). A pair that does not load is
    /// logged and the previous one kept: a half-written file must not take HTTPS down.
    fn reload(&self, forced: bool) {
        if !self.watched.changed(forced) {
            return;
        }
        match load_pair(&self.cert, &self.key, &self.provider) {
            Ok(pair) => {
                *self.current.write().expect("lock poisoned") = Arc::new(pair);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("lock poisoned").clone())
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            file: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::KeyFile {
        file: key.to_owned(),
        source,
    })?;
    let signer = provider
        .key_provider
        .load_private_key(private)
        .map_err(|source| TlsError::Key {
            file: key.to_owned(),
            source,
        })?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match().map_err(|source| TlsError::Mismatch {
        key: key.to_owned(),
        cert: cert.to_owned(),
        source,
    })?;
    Ok(pair)
}
