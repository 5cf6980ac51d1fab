//! `GET /v1/tunnel?host=H&port=P` with `Connection: Upgrade`, `Upgrade: gocred-tunnel` (HTTP/1.1
//! only): after `101 Switching Protocols` the connection carries the raw bytes of an SSH session
//! to the broker's configured SSH server for host `H`. See `docs/ssh-tunnel.md`.
//!
//! Must not: depend on broker modules.

use serde::{Deserialize, Serialize};

/// The `Upgrade` protocol token.
pub const UPGRADE_PROTOCOL: &str = "gocred-tunnel";
/// The route.
pub const TUNNEL_PATH: &str = "/v1/tunnel";

/// The query of `GET /v1/tunnel`: the host and port `ssh` was asked for (`%h %p`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelRequest {
    pub host: String,
    pub port: u16,
}
