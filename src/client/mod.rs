//! The client side of gocred (what `gocred login`, `status`, `token`, `logout` and the helpers
//! use): talking to ssh-agent ([`ssh_agent`]), signing with agent or key-file keys ([`signer`]), the
//! broker API ([`api`]) and the local session state ([`state`]: XDG dirs, 0600 files, one
//! refresh at a time under a file lock), SSO with the identity provider ([`oidc`]) and ambient
//! workload tokens ([`ambient`]: Kubernetes projected tokens, GitHub Actions, GitLab).
//!
//! Must not: print to the terminal (the CLI decides what to say) or log a token or proof.

pub mod ambient;
pub mod api;
pub mod meta;
pub mod oidc;
pub mod session;
pub mod signer;
pub mod ssh_agent;
pub mod state;

/// A client-side failure, phrased so the CLI can print it as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ssh-agent at {sock}: {reason}")]
    Agent { sock: String, reason: String },
    #[error("key {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("broker {url}: {reason}")]
    Broker { url: String, reason: String },
    /// The broker answered with an error status.
    #[error("broker refused ({status}): {message}")]
    Refused { status: u16, code: String, message: String },
    /// The broker's metadata asks for something it may not (the whole answer is refused).
    #[error("the broker's metadata {0}; not configuring anything")]
    UntrustedMetadata(String),
    #[error("session state {path}: {reason}")]
    State { path: String, reason: String },
    #[error("not logged in: run `gocred login --ssh --broker URL`")]
    NotLoggedIn,
    #[error("not logged in: run gocred login (or configure a workload token: GOCRED_TOKEN_FILE and GOCRED_BROKER)")]
    NoSession,
    /// The session cannot be renewed; the reason says what to run.
    #[error("{reason}")]
    Renew { reason: &'static str },
    #[error("{what}: {source}")]
    RenewFailed {
        what: &'static str,
        #[source]
        source: Box<ClientError>,
    },
    #[error("exchanging the {what}: {source}")]
    Exchange {
        what: String,
        #[source]
        source: Box<ClientError>,
    },
    /// A token or proof outside its alphabet (the text itself is never shown).
    #[error("{0}; run gocred login")]
    MalformedToken(&'static str),
    #[error("no usable SSH key: {0}")]
    NoKey(String),
    /// The identity provider (SSO) failed or refused.
    #[error("identity provider {issuer}: {reason}")]
    Idp { issuer: String, reason: String },
    /// An ambient workload credential could not be read.
    #[error("workload token ({source_name}): {reason}")]
    Ambient { source_name: String, reason: String },
}
