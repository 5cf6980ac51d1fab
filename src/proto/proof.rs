//! Proofs of possession on the wire (see `docs/proofs.md`): the header that carries them, the
//! SSHSIG namespace, the exact signed message and the encoding
//! `v1.<exp>.<base64url(prefix)>.<base64url(SSHSIG blob)>`. The client builds proofs with these
//! functions; the broker's `auth::proof` parses and verifies with the same ones.
//!
//! Must not: depend on broker modules.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::Digest;

/// The request header carrying a proof (HTTP header names are case-insensitive).
pub const PROOF_HEADER: &str = "gocred-proof";
/// SSHSIG namespace of proofs.
pub const PROOF_NAMESPACE: &str = "gocred-proof@v1";
/// The longest a proof may live.
pub const MAX_PROOF_LIFETIME_SECS: u64 = 600;

/// base64url (no padding) of SHA-256 of the token text.
pub fn token_hash(token: &str) -> String {
    B64URL.encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The exact bytes signed for a proof.
pub fn proof_message(token: &str, prefix: &str, exp: u64) -> String {
    format!("gocred-proof-v1\ntoken:{}\nprefix:{prefix}\nexp:{exp}\n", token_hash(token))
}

/// Assemble the wire form from its parts (`sig_b64url`: the binary SSHSIG, base64url).
pub fn encode(exp: u64, prefix: &str, sig_b64url: &str) -> String {
    format!("v1.{exp}.{}.{sig_b64url}", B64URL.encode(prefix.as_bytes()))
}

/// The binary SSHSIG blob, base64url without padding (how login answers and proofs carry it).
pub fn signature_b64url(sig: &ssh_key::SshSig) -> Result<String, ssh_key::Error> {
    use ssh_key::encoding::Encode;
    let mut out = Vec::new();
    sig.encode(&mut out)?;
    Ok(B64URL.encode(out))
}
