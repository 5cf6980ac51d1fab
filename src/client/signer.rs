//! Signing keys on the client: an ssh-agent identity or an OpenSSH private key file (encrypted
//! files are decrypted with a passphrase read from the terminal). Produces SSHSIG signatures
//! over the plain public key; a certificate, when there is one, travels separately.

use super::ClientError;
use super::ssh_agent::Agent;
use ssh_key::{Certificate, HashAlg, PrivateKey, SshSig, public::KeyData};
use std::path::{Path, PathBuf};

/// Where a session's key lives, as remembered in the session state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum KeyRef {
    /// An ssh-agent identity, by its OpenSSH public key line.
    Agent { public_key: String },
    /// A private key file.
    File { path: PathBuf },
}

pub enum Signer {
    Agent { agent: Agent, key: KeyData, certificate: Option<Certificate> },
    File { path: PathBuf, key: Box<PrivateKey>, certificate: Option<Certificate> },
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("source", &self.describe()).field("fingerprint", &self.fingerprint()).finish()
    }
}

/// Read a passphrase from the controlling terminal (no echo).
pub fn prompt_passphrase(path: &Path) -> Result<zeroize::Zeroizing<String>, ClientError> {
    rpassword::prompt_password(format!("Enter passphrase for {}: ", path.display()))
        .map(zeroize::Zeroizing::new)
        .map_err(|e| ClientError::KeyFile {
            path: path.display().to_string(),
            reason: format!("the key is encrypted and no passphrase could be read from a terminal ({e}); add it to ssh-agent instead"),
        })
}

impl Signer {
    /// An agent identity (`key` may be a certificate: the agent signs with its key).
    pub fn agent(agent: Agent, key: KeyData) -> Signer {
        match key.certificate().cloned() {
            Some(cert) => Signer::Agent { agent, key: cert.public_key().clone(), certificate: Some(cert) },
            None => Signer::Agent { agent, key, certificate: None },
        }
    }

    /// A private key file; `interactive`: prompt for the passphrase of an encrypted key.
    /// `<path>-cert.pub`, when present, is used as the certificate.
    pub fn file(path: &Path, interactive: bool) -> Result<Signer, ClientError> {
        let err = |reason: String| ClientError::KeyFile { path: path.display().to_string(), reason };
        let mut key = PrivateKey::read_openssh_file(path).map_err(|e| err(format!("cannot read private key: {e}")))?;
        if key.is_encrypted() {
            if !interactive {
                return Err(err("the key is encrypted and no terminal is available: add it to ssh-agent".into()));
            }
            let pass = prompt_passphrase(path)?;
            key = key.decrypt(pass.as_bytes()).map_err(|_| err("wrong passphrase".into()))?;
        }
        let mut cert_path = path.as_os_str().to_owned();
        cert_path.push("-cert.pub");
        let certificate = match std::fs::read_to_string(&cert_path) {
            Ok(text) => {
                let c = Certificate::from_openssh(text.trim()).map_err(|e| err(format!("certificate: {e}")))?;
                (c.public_key() == key.public_key().key_data()).then_some(c)
            }
            Err(_) => None,
        };
        Ok(Signer::File { path: path.to_path_buf(), key: Box::new(key), certificate })
    }

    /// The plain public key.
    pub fn public_key(&self) -> KeyData {
        match self {
            Signer::Agent { key, .. } => key.clone(),
            Signer::File { key, .. } => key.public_key().key_data().clone(),
        }
    }

    pub fn certificate(&self) -> Option<&Certificate> {
        match self {
            Signer::Agent { certificate, .. } | Signer::File { certificate, .. } => certificate.as_ref(),
        }
    }

    pub fn fingerprint(&self) -> String {
        self.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    pub fn describe(&self) -> String {
        match self {
            Signer::Agent { agent, .. } => format!("ssh-agent ({})", agent.sock().display()),
            Signer::File { path, .. } => path.display().to_string(),
        }
    }

    /// What to remember in the session to find this key again.
    pub fn key_ref(&self) -> KeyRef {
        match self {
            Signer::Agent { key, certificate, .. } => {
                let k = certificate
                    .as_ref()
                    .map(|c| KeyData::Certificate(Box::new(c.clone())))
                    .unwrap_or_else(|| key.clone());
                KeyRef::Agent { public_key: ssh_key::PublicKey::from(k).to_openssh().unwrap_or_default() }
            }
            Signer::File { path, .. } => KeyRef::File { path: path.clone() },
        }
    }

    /// Find the key a session was made with again.
    pub fn from_ref(r: &KeyRef, interactive: bool) -> Result<Signer, ClientError> {
        match r {
            KeyRef::File { path } => Signer::file(path, interactive),
            KeyRef::Agent { public_key } => {
                let agent = Agent::from_env().ok_or_else(|| {
                    ClientError::NoKey("SSH_AUTH_SOCK is not set and the session key lives in ssh-agent".into())
                })?;
                let want =
                    ssh_key::PublicKey::from_openssh(public_key).map_err(|e| ClientError::Sign(e.to_string()))?;
                let found = agent.identities()?.into_iter().find(|i| &i.key == want.key_data()).ok_or_else(|| {
                    ClientError::NoKey(format!("ssh-agent no longer holds {}", want.fingerprint(HashAlg::Sha256)))
                })?;
                Ok(Signer::agent(agent, found.key))
            }
        }
    }

    /// SSHSIG over `msg` in `namespace`, by the plain key.
    pub fn sign(&self, namespace: &str, msg: &[u8]) -> Result<SshSig, ClientError> {
        match self {
            Signer::File { key, .. } => {
                key.sign(namespace, HashAlg::Sha512, msg).map_err(|e| ClientError::Sign(e.to_string()))
            }
            Signer::Agent { agent, key, certificate } => {
                let data = SshSig::signed_data(namespace, HashAlg::Sha512, msg)
                    .map_err(|e| ClientError::Sign(e.to_string()))?;
                let ask = certificate
                    .as_ref()
                    .map(|c| KeyData::Certificate(Box::new(c.clone())))
                    .unwrap_or_else(|| key.clone());
                let sig = agent.sign(&ask, &data)?;
                SshSig::new(key.clone(), namespace, HashAlg::Sha512, sig).map_err(|e| ClientError::Sign(e.to_string()))
            }
        }
    }

    /// A proof (wire form) for `token`, valid for URLs under `prefix` until `exp`.
    pub fn proof(&self, token: &str, prefix: &str, exp: u64) -> Result<String, ClientError> {
        let msg = crate::proto::proof::proof_message(token, prefix, exp);
        let sig = self.sign(crate::proto::proof::PROOF_NAMESPACE, msg.as_bytes())?;
        let b64 = crate::proto::proof::signature_b64url(&sig).map_err(|e| ClientError::Sign(e.to_string()))?;
        Ok(crate::proto::proof::encode(exp, prefix, &b64))
    }
}

/// The default key files, in the order OpenSSH tries them.
pub fn default_key_files() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else { return Vec::new() };
    let ssh = PathBuf::from(home).join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| ssh.join(n)).filter(|p| p.exists()).collect()
}
