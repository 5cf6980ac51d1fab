//! SSHSIG (OpenSSH `PROTOCOL.sshsig`) parsing and verification, for the namespaces
//! `gocred-login@v1` and `gocred-proof@v1`.
//!
//! Why `ssh-key` 0.7 (a release candidate) and not 0.6.7: an SSHSIG made by `ssh-keygen -Y sign`
//! with a certificate key embeds the certificate as its public key, and 0.6.7 cannot parse that
//! (it fails on the certificate algorithm). 0.7 parses it; it still does not verify with a
//! certificate key directly, so [`verify`] re-checks the signature with the certificate's own
//! public key (the signed blob does not include the public key, so this is equivalent).
//!
//! Must not: trust the key inside a signature by itself — callers decide whether the returned
//! key or certificate is authorized.

use super::AuthError;
use base64::Engine;
use ssh_key::{Certificate, HashAlg, PublicKey, SshSig, public::KeyData};

/// The verified signer: its plain public key and, when it signed with one, its certificate.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: KeyData,
    pub certificate: Option<Certificate>,
}

impl Signer {
    /// `SHA256:...`, as `ssh-keygen -l` prints it, of the plain key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }
}

pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parse a signature given as the armored `-----BEGIN SSH SIGNATURE-----` text, or as the
/// base64 / base64url (padding optional) of the binary SSHSIG blob.
pub fn parse(text: &str) -> Result<SshSig, AuthError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return SshSig::from_pem(text).map_err(|e| AuthError::MalformedSignature(e.to_string()));
    }
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cleaned.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(&cleaned))
        .map_err(|_| AuthError::MalformedSignature("not base64".into()))?;
    decode_binary(&bytes)
}

fn decode_binary(bytes: &[u8]) -> Result<SshSig, AuthError> {
    use ssh_key::encoding::Decode;
    let mut reader = bytes;
    let sig = SshSig::decode(&mut reader).map_err(|e| AuthError::MalformedSignature(e.to_string()))?;
    if !reader.is_empty() {
        return Err(AuthError::MalformedSignature("trailing bytes".into()));
    }
    Ok(sig)
}

/// The binary SSHSIG blob, base64url without padding (the proof wire form).
pub fn to_b64url(sig: &SshSig) -> Result<String, AuthError> {
    use ssh_key::encoding::Encode;
    let mut out = Vec::new();
    sig.encode(&mut out).map_err(|e| AuthError::MalformedSignature(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

/// Verify `sig` over `msg` in `namespace`; returns the signer.
pub fn verify(sig: &SshSig, namespace: &'static str, msg: &[u8]) -> Result<Signer, AuthError> {
    if sig.namespace() != namespace {
        return Err(AuthError::WrongNamespace { got: sig.namespace().to_string(), expected: namespace });
    }
    if !matches!(sig.hash_alg(), HashAlg::Sha256 | HashAlg::Sha512) {
        return Err(AuthError::MalformedSignature("unsupported hash algorithm".into()));
    }
    let (key, certificate) = match sig.public_key().certificate() {
        Some(cert) => (cert.public_key().clone(), Some(cert.clone())),
        None => (sig.public_key().clone(), None),
    };
    if key.is_certificate() {
        return Err(AuthError::MalformedSignature("nested certificate".into()));
    }
    let plain = if certificate.is_some() {
        SshSig::new(key.clone(), namespace, sig.hash_alg(), sig.signature().clone())
            .map_err(|e| AuthError::MalformedSignature(e.to_string()))?
    } else {
        sig.clone()
    };
    PublicKey::from(key.clone()).verify(namespace, msg, &plain).map_err(|_| AuthError::BadSignature)?;
    Ok(Signer { key, certificate })
}

/// Keys a token may be bound to: Ed25519, ECDSA (NIST curves), RSA of at least 2048 bits; not a
/// certificate (bind the plain key).
pub fn check_key_strength(key: &KeyData) -> Result<(), AuthError> {
    match key {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => Ok(()),
        KeyData::Rsa(rsa) => {
            let bits = rsa.key_size();
            if bits >= 2048 {
                Ok(())
            } else {
                Err(AuthError::MalformedSignature(format!("RSA key of {bits} bits is too small (at least 2048)")))
            }
        }
        _ => Err(AuthError::MalformedSignature("key type not accepted (use Ed25519, ECDSA or RSA)".into())),
    }
}
