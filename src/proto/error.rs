//! The JSON error body every API route answers with (proxied routes answer one `text/plain`
//! line instead, which `go` and `git` print).
//!
//! Must not: depend on broker modules.

use serde::{Deserialize, Serialize};

/// `{ "error": code, "message": one line, "request_id": id }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default)]
    pub request_id: String,
}
