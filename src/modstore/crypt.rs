//! The sealed object format: AES-256-GCM over 64 KiB segments (the STREAM construction: nonce =
//! 7-byte random prefix ‖ 32-bit segment counter ‖ last-segment flag), every segment's associated
//! data the SHA-256 of the object's head, which names the module, version, kind, key id, size and
//! hashes. A segment moved, dropped, reordered, truncated or taken from another object fails to
//! open; so does a head edited or swapped.
//!
//! Must not: do I/O or know where objects live.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// Authentication tag per segment.
pub const TAG: usize = 16;
/// Segments per stored part (2 MiB of plaintext): a reader holds at most one part in memory.
pub const SEGMENTS_PER_PART: usize = 32;
pub const PART: usize = SEGMENT * SEGMENTS_PER_PART;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("segment {index} failed authentication")]
    Open { index: u64 },
    #[error("sealing segment {index} failed")]
    Seal { index: u64 },
}

/// One object's sealing context: its key, nonce prefix and head digest.
pub struct Sealer {
    cipher: Aes256Gcm,
    prefix: [u8; 7],
    aad: [u8; 32],
    segments: u64,
}

/// How many segments an object of `size` bytes has (an empty object has one, empty).
pub fn segment_count(size: u64) -> u64 {
    size.div_ceil(SEGMENT as u64).max(1)
}

impl Sealer {
    /// Every object is sealed under its own key, derived from the data key and the digest of
    /// its head (which holds a random object id and nonce prefix): nonces never repeat under
    /// one key however many objects the store holds.
    pub fn new(key: &[u8; 32], prefix: [u8; 7], head: &[u8], size: u64) -> Sealer {
        let aad: [u8; 32] = Sha256::digest(head).into();
        let mut kdf = Sha256::new();
        kdf.update(b"gocred module store object key v1\0");
        kdf.update(key);
        kdf.update(aad);
        let object_key = zeroize::Zeroizing::new(<[u8; 32]>::from(kdf.finalize()));
        Sealer { cipher: Aes256Gcm::new(object_key.as_slice().into()), prefix, aad, segments: segment_count(size) }
    }

    fn nonce(&self, index: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&(index as u32).to_be_bytes());
        n[11] = u8::from(index + 1 == self.segments);
        n
    }

    pub fn seal(&self, index: u64, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let n = self.nonce(index);
        self.cipher
            .encrypt(Nonce::from_slice(&n), Payload { msg: plain, aad: &self.aad })
            .map_err(|_| CryptError::Seal { index })
    }

    pub fn open(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if index >= self.segments {
            return Err(CryptError::Open { index });
        }
        let n = self.nonce(index);
        self.cipher
            .decrypt(Nonce::from_slice(&n), Payload { msg: sealed, aad: &self.aad })
            .map_err(|_| CryptError::Open { index })
    }

    /// Open every segment of a part that starts at segment `first`.
    pub fn open_part(&self, first: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if sealed.is_empty() {
            return Err(CryptError::Open { index: first });
        }
        let mut out = Vec::with_capacity(sealed.len());
        for (i, seg) in sealed.chunks(SEGMENT + TAG).enumerate() {
            out.extend(self.open(first + i as u64, seg)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_bound_to_their_place_and_their_head() {
        let key = [7u8; 32];
        let s = Sealer::new(&key, [1; 7], b"head-a", (SEGMENT * 2) as u64);
        let a = s.seal(0, &[0u8; SEGMENT]).unwrap();
        let b = s.seal(1, &[1u8; SEGMENT]).unwrap();
        assert_eq!(s.open(0, &a).unwrap(), vec![0u8; SEGMENT]);
        // Reordered, or the last one presented as an earlier one: refused.
        assert!(s.open(1, &a).is_err());
        assert!(s.open(0, &b).is_err());
        // Another head (module/version/kind): refused.
        let other = Sealer::new(&key, [1; 7], b"head-b", (SEGMENT * 2) as u64);
        assert!(other.open(0, &a).is_err());
        // Truncated: an object that claims one segment cannot accept a non-final one.
        let short = Sealer::new(&key, [1; 7], b"head-a", SEGMENT as u64);
        assert!(short.open(0, &a).is_err());
        // A flipped byte.
        let mut bad = a.clone();
        bad[100] ^= 1;
        assert!(s.open(0, &bad).is_err());
        // An empty object is one empty, final segment.
        let e = Sealer::new(&key, [2; 7], b"h", 0);
        let sealed = e.seal(0, b"").unwrap();
        assert_eq!(e.open_part(0, &sealed).unwrap(), Vec::<u8>::new());
    }
}
