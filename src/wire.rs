//! Wire formats shared by the client and the broker: the alphabets of access tokens and
//! proofs. The client checks every token it receives and every token and proof it is about to
//! print into a line protocol (GOAUTH headers, git credential lines, netrc, askpass), so a
//! broker answer or a session file cannot smuggle a CR/LF, a space or a `~` into them.
//!
//! Must not: depend on broker modules (it is imported by both sides).

/// Longest token the client accepts (claims carry groups; far above what the broker mints).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest proof the client accepts (an RSA-4096 SSHSIG is about 1.5 KiB of base64url).
pub const MAX_PROOF_LEN: usize = 8 * 1024;

fn b64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A compact JWS: three non-empty base64url segments separated by `.`.
pub fn is_token(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() <= MAX_TOKEN_LEN && parts.len() == 3 && parts.iter().all(|p| b64url(p))
}

/// `v1.<exp digits>.<base64url prefix>.<base64url signature>`.
pub fn is_proof(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() <= MAX_PROOF_LEN
        && parts.len() == 4
        && parts[0] == "v1"
        && !parts[1].is_empty()
        && parts[1].len() <= 20
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && b64url(parts[2])
        && b64url(parts[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_proofs_stay_in_their_alphabets() {
        assert!(is_token("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln-_x"));
        assert!(is_proof("v1.1700000000.aHR0cHM6Ly9iLw.c2ln-_x"));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.c\r\nAuthorization: x",
            "a.b.c\n",
            "a.b c.d",
            "a.b.c~p",
            "a.b.cé",
            "a.b.c=",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert!(!is_token(&format!("a.b.{}", "c".repeat(MAX_TOKEN_LEN))));
        for bad in [
            "",
            "v2.1.a.b",
            "v1..a.b",
            "v1.x.a.b",
            "v1.1.a",
            "v1.1.a.b.c",
            "v1.1.a.b\r\nX: y",
            "v1.1.a.b\n",
            "v1.1.a b.c",
            "v1.1.a.b~",
            "v1.1.a.bé",
        ] {
            assert!(!is_proof(bad), "{bad:?}");
        }
    }
}
