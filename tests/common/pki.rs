//! Certificates for HTTPS tests: a throwaway CA and a server certificate for 127.0.0.1.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use wharf::config::TlsConfig;

/// A CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM.
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

pub fn issue(ca_name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::new(ca_params, ca_key))
        .unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Writes `tls.crt` and `tls.key` into `dir` as an operator's tooling would: new files renamed
/// into place.
pub fn write_pair(dir: &Path, pki: &Pki) {
    for (name, pem) in [("tls.crt", &pki.cert), ("tls.key", &pki.key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// `[server.tls]` naming the pair in `dir`.
pub fn server_tls(dir: &Path) -> TlsConfig {
    TlsConfig {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// Writes the CA certificate to `dir/ca.pem`, for an `upstream.ca_file`; its path.
pub fn write_ca(dir: &Path, pki: &Pki) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca).unwrap();
    path
}

/// A client that trusts only `pki`'s CA, over HTTP/1.1 or (by ALPN) HTTP/2.
pub fn client_trusting(pki: &Pki, http2: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap());
    let builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().unwrap()
}
