//! A minimal ssh-agent client (draft-miller-ssh-agent): list identities, sign. Blocking I/O on
//! the `SSH_AUTH_SOCK` Unix socket; the calls are short and made from CLI commands.

use super::ClientError;
use ssh_key::encoding::{Decode, Encode};
use ssh_key::public::KeyData;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
/// Ask for `rsa-sha2-512` signatures from RSA keys.
const RSA_SHA2_512: u32 = 4;

/// One key the agent holds (a plain key or a certificate).
#[derive(Debug, Clone)]
pub struct AgentKey {
    pub key: KeyData,
    pub comment: String,
}

pub struct Agent {
    sock: PathBuf,
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    if buf.len() < 4 {
        return None;
    }
    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let end = n.checked_add(4)?;
    if buf.len() < end {
        return None;
    }
    let s = &buf[4..end];
    *buf = &buf[end..];
    Some(s)
}

impl Agent {
    /// The agent named by `SSH_AUTH_SOCK`, if set.
    pub fn from_env() -> Option<Agent> {
        std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).map(|s| Agent { sock: PathBuf::from(s) })
    }

    pub fn at(sock: &Path) -> Agent {
        Agent { sock: sock.to_path_buf() }
    }

    pub fn sock(&self) -> &Path {
        &self.sock
    }

    fn err(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Agent { sock: self.sock.display().to_string(), reason: reason.into() }
    }

    fn call(&self, msg: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut s = UnixStream::connect(&self.sock).map_err(|e| self.err(format!("cannot connect: {e}")))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok();
        let mut framed = (msg.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        s.write_all(&framed).map_err(|e| self.err(e.to_string()))?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).map_err(|e| self.err(e.to_string()))?;
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 || n > 256 * 1024 {
            return Err(self.err("bad reply length"));
        }
        let mut reply = vec![0u8; n];
        s.read_exact(&mut reply).map_err(|e| self.err(e.to_string()))?;
        Ok(reply)
    }

    /// The agent's keys.
    pub fn identities(&self) -> Result<Vec<AgentKey>, ClientError> {
        let reply = self.call(&[REQUEST_IDENTITIES])?;
        if reply[0] != IDENTITIES_ANSWER || reply.len() < 5 {
            return Err(self.err("unexpected reply to identity request"));
        }
        let count = u32::from_be_bytes([reply[1], reply[2], reply[3], reply[4]]);
        let mut rest = &reply[5..];
        let mut out = Vec::new();
        for _ in 0..count {
            let blob = take_string(&mut rest).ok_or_else(|| self.err("truncated identity list"))?;
            let comment = take_string(&mut rest).ok_or_else(|| self.err("truncated identity list"))?;
            // Keys of types this client cannot use (e.g. DSA, FIDO) are skipped.
            if let Ok(key) = KeyData::decode(&mut &blob[..]) {
                out.push(AgentKey { key, comment: String::from_utf8_lossy(comment).into_owned() });
            }
        }
        Ok(out)
    }

    /// Sign `data` with `key` (its wire blob is what the agent looks up).
    pub fn sign(&self, key: &KeyData, data: &[u8]) -> Result<ssh_key::Signature, ClientError> {
        let mut blob = Vec::new();
        key.encode(&mut blob).map_err(|e| self.err(e.to_string()))?;
        let mut msg = vec![SIGN_REQUEST];
        put_string(&mut msg, &blob);
        put_string(&mut msg, data);
        let base = key.certificate().map(|c| c.public_key()).unwrap_or(key);
        let flags = if matches!(base, KeyData::Rsa(_)) { RSA_SHA2_512 } else { 0 };
        msg.extend_from_slice(&flags.to_be_bytes());
        let reply = self.call(&msg)?;
        match reply[0] {
            SIGN_RESPONSE => {
                let mut rest = &reply[1..];
                let sig = take_string(&mut rest).ok_or_else(|| self.err("truncated signature"))?;
                ssh_key::Signature::try_from(sig).map_err(|e| self.err(format!("cannot parse signature: {e}")))
            }
            FAILURE => Err(self.err("the agent refused to sign (key removed, or confirmation denied)")),
            t => Err(self.err(format!("unexpected reply type {t}"))),
        }
    }
}
