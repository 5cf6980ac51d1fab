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
pub struct VerifiedSigner {
    pub key: KeyData,
    pub certificate: Option<Certificate>,
}

impl VerifiedSigner {
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

/// FIDO authenticator data flags in a security-key (`sk-`) signature (WebAuthn §6.1).
const SK_USER_PRESENT: u8 = 0x01;
const SK_USER_VERIFIED: u8 = 0x04;

/// Verify `sig` over `msg` in `namespace`; returns the signer. A security-key signature must
/// carry the user-presence flag (someone touched the key), as OpenSSH requires by default, and
/// the user-verification flag (PIN or biometric) too when `require_uv`.
pub fn verify(
    sig: &SshSig,
    namespace: &'static str,
    msg: &[u8],
    require_uv: bool,
) -> Result<VerifiedSigner, AuthError> {
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
    if matches!(key, KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_)) {
        // The signed data ends with flags (1 byte) and a counter (4 bytes).
        let data = plain.signature().as_bytes();
        let flags = data.len().checked_sub(5).map(|i| data[i]).ok_or(AuthError::BadSignature)?;
        if flags & SK_USER_PRESENT == 0 {
            return Err(AuthError::SecurityKeyFlags("made without user presence (touch the security key)"));
        }
        if require_uv && flags & SK_USER_VERIFIED == 0 {
            return Err(AuthError::SecurityKeyFlags(
                "made without user verification (ssh.require_user_verification: use a key made with `ssh-keygen -O verify-required`)",
            ));
        }
    }
    Ok(VerifiedSigner { key, certificate })
}

/// The exact size of an RSA modulus in bits (`ssh-key`'s `key_size` counts whole bytes, so a
/// 2041-bit key would pass as 2048).
pub fn rsa_bits(rsa: &ssh_key::public::RsaPublicKey) -> u32 {
    match rsa.n().as_positive_bytes() {
        Some([first, rest @ ..]) => rest.len() as u32 * 8 + (8 - first.leading_zeros()),
        _ => 0,
    }
}

/// Keys a token may be bound to: Ed25519, ECDSA (NIST curves), RSA of at least 2048 bits; not a
/// certificate (bind the plain key).
pub fn check_key_strength(key: &KeyData) -> Result<(), AuthError> {
    match key {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => Ok(()),
        KeyData::Rsa(rsa) => {
            let bits = rsa_bits(rsa);
            if bits >= 2048 {
                Ok(())
            } else {
                Err(AuthError::MalformedSignature(format!("RSA key of {bits} bits is too small (at least 2048)")))
            }
        }
        _ => Err(AuthError::MalformedSignature("key type not accepted (use Ed25519, ECDSA or RSA)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use ssh_key::public::{Ed25519PublicKey, SkEd25519};

    /// An `sk-ssh-ed25519@openssh.com` SSHSIG over `msg` as a FIDO authenticator would make it,
    /// with authenticator `flags`.
    fn sk_sig(namespace: &str, msg: &[u8], flags: u8) -> SshSig {
        use sha2::Digest;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let key = KeyData::SkEd25519(SkEd25519::new(Ed25519PublicKey(sk.verifying_key().to_bytes()), "ssh:"));
        let signed = SshSig::signed_data(namespace, HashAlg::Sha512, msg).unwrap();
        let counter = 42u32.to_be_bytes();
        let mut data = Vec::new();
        data.extend(sha2::Sha256::digest(b"ssh:"));
        data.push(flags);
        data.extend(counter);
        data.extend(sha2::Sha256::digest(&signed));
        let mut sig = sk.sign(&data).to_bytes().to_vec();
        sig.push(flags);
        sig.extend(counter);
        let sig = ssh_key::Signature::new(ssh_key::Algorithm::SkEd25519, sig).unwrap();
        SshSig::new(key, namespace, HashAlg::Sha512, sig).unwrap()
    }

    #[test]
    fn security_key_signatures_need_user_presence_and_optionally_verification() {
        let ns = "gocred-proof@v1";
        // Present and verified: accepted either way.
        assert!(verify(&sk_sig(ns, b"m", 0x05), ns, b"m", true).is_ok());
        // Present only: accepted unless user verification is required.
        assert!(verify(&sk_sig(ns, b"m", 0x01), ns, b"m", false).is_ok());
        let e = verify(&sk_sig(ns, b"m", 0x01), ns, b"m", true).unwrap_err().to_string();
        assert!(e.contains("without user verification"), "{e}");
        // Flags clear (no touch): refused, even with verification not required.
        for flags in [0x00, 0x04] {
            let e = verify(&sk_sig(ns, b"m", flags), ns, b"m", false).unwrap_err().to_string();
            assert!(e.contains("without user presence"), "{flags:#x}: {e}");
        }
        // The flags are signed: flipping them in transit breaks the signature.
        let mut forged = sk_sig(ns, b"m", 0x00);
        let mut data = forged.signature().as_bytes().to_vec();
        let i = data.len() - 5;
        data[i] = 0x01;
        forged = SshSig::new(
            forged.public_key().clone(),
            ns,
            HashAlg::Sha512,
            ssh_key::Signature::new(ssh_key::Algorithm::SkEd25519, data).unwrap(),
        )
        .unwrap();
        assert!(matches!(verify(&forged, ns, b"m", false), Err(AuthError::BadSignature)));
    }

    #[test]
    fn rsa_key_sizes_are_counted_to_the_bit() {
        use ssh_key::Mpint;
        let rsa = |first: u8| {
            let mut n = vec![first];
            n.extend(std::iter::repeat_n(0xffu8, 255));
            ssh_key::public::RsaPublicKey::new(Mpint::from_positive_bytes(&[1, 0, 1]), Mpint::from_positive_bytes(&n))
                .unwrap()
        };
        assert_eq!(rsa_bits(&rsa(0x80)), 2048);
        assert_eq!(rsa_bits(&rsa(0x7f)), 2047);
        assert_eq!(rsa_bits(&rsa(0x01)), 2041);
        assert!(check_key_strength(&KeyData::Rsa(rsa(0x80))).is_ok());
        for first in [0x7f, 0x01] {
            let e = check_key_strength(&KeyData::Rsa(rsa(first))).unwrap_err().to_string();
            assert!(e.contains("too small"), "{e}");
        }
        // A real 2047-bit key from ssh-keygen.
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2047", "-N", "", "-f"])
            .arg(&k)
            .output()
            .expect("ssh-keygen (OpenSSH) is needed for this test: install openssh-client");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let public = ssh_key::PublicKey::read_openssh_file(k.with_extension("pub")).unwrap();
        let KeyData::Rsa(r) = public.key_data() else { panic!("not RSA") };
        assert_eq!(rsa_bits(r), 2047);
        assert!(check_key_strength(public.key_data()).is_err());
    }
}
