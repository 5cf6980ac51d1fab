//! TLS: the rustls server configuration (ring provider, HTTP/2 + HTTP/1.1 ALPN) and the `--dev`
//! self-signed CA — created once in the dev data dir, reused on every later start, with a
//! loopback server certificate it signs (renewed well before it expires).
//!
//! Must not: decide what is served, or write a private key anywhere but a 0600 file.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in TLS certificate file {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read TLS private key {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("invalid TLS certificate/key pair: {0}")]
    Config(#[source] rustls::Error),
    #[error("cannot write the dev CA file {}: {source}", path.display())]
    WriteDevCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the dev CA in {}: {source}", dir.display())]
    MakeDevCa {
        dir: PathBuf,
        #[source]
        source: rcgen::Error,
    },
}

/// A rustls server config from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsError::ReadCert { path: cert.into(), source })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::ReadCert { path: cert.into(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.into() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey { path: key.into(), source })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Paths of the dev TLS material.
#[derive(Debug, Clone)]
pub struct DevTls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when the CA was created by this call.
    pub created_ca: bool,
}

/// Server certificates are renewed when older than this (they are valid for 397 days).
const LEAF_RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(300 * 24 * 3600);

fn dev_ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.distinguished_name.push(rcgen::DnType::CommonName, "gocred dev CA");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "gocred --dev");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The error of a failed dev-CA file operation on `path`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::WriteDevCa { path: path.into(), source }
}

/// Create (once) the dev CA in `dir` and a server certificate for 127.0.0.1, ::1 and localhost.
pub fn ensure_dev_ca(dir: &Path) -> Result<DevTls, TlsError> {
    let fail = |source| TlsError::MakeDevCa { dir: dir.into(), source };
    crate::fsutil::ensure_private_dir(dir).map_err(io(dir))?;
    let out = DevTls {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        created_ca: false,
    };
    let ca_key_path = dir.join("ca.key");
    let leaf_fresh = std::fs::metadata(&out.cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < LEAF_RENEW_AFTER);
    if leaf_fresh && out.key.exists() && out.ca_cert.exists() {
        return Ok(out);
    }
    let write = |p: &Path, data: &str, mode: u32| -> Result<(), TlsError> {
        crate::fsutil::write_private_atomic(p, data.as_bytes()).map_err(io(p))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
    };
    let (issuer, created_ca) = if out.ca_cert.exists() && ca_key_path.exists() {
        let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let kp = rcgen::KeyPair::from_pem(&ca_key).map_err(fail)?;
        // The issuer is identified by its subject name and key, both unchanged since creation.
        (rcgen::Issuer::new(dev_ca_params().map_err(fail)?, kp), false)
    } else {
        let mut params = dev_ca_params().map_err(fail)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let kp = rcgen::KeyPair::generate().map_err(fail)?;
        let ca = params.self_signed(&kp).map_err(fail)?;
        write(&ca_key_path, &kp.serialize_pem(), 0o600)?;
        write(&out.ca_cert, &ca.pem(), 0o644)?;
        (rcgen::Issuer::new(params, kp), true)
    };
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(fail)?;
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "gocred dev server");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(397);
    let kp = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = leaf.signed_by(&kp, &issuer).map_err(fail)?;
    write(&out.key, &kp.serialize_pem(), 0o600)?;
    write(&out.cert, &cert.pem(), 0o644)?;
    Ok(DevTls { created_ca, ..out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_ca_is_created_once_and_server_config_loads() {
        let d = tempfile::tempdir().unwrap();
        let a = ensure_dev_ca(d.path()).unwrap();
        assert!(a.created_ca);
        let ca1 = std::fs::read(&a.ca_cert).unwrap();
        std::fs::remove_file(&a.cert).unwrap(); // force a new leaf from the same CA
        let b = ensure_dev_ca(d.path()).unwrap();
        assert!(!b.created_ca);
        assert_eq!(std::fs::read(&b.ca_cert).unwrap(), ca1);
        server_config(&b.cert, &b.key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
