//! The audit log: one JSON line per authentication and authorization decision — time, request
//! id, principal, auth method, key fingerprint, action, resource, decision, policy ids, reason —
//! to stdout or an append-only 0600 file.
//!
//! Must not: record a token, proof, password, signature or private key. Events are built from
//! typed fields only, never from raw request data.

use serde::Serialize;
use std::io::Write;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One decision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// `authn`, `authz` or `proxy`.
    pub kind: &'static str,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_key_id: Option<String>,
    pub action: String,
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
    pub reason: String,
}

impl Event {
    /// An event of `kind` about an authenticated principal (its name, method and key filled in).
    pub fn about(kind: &'static str, request_id: &str, p: &crate::auth::Principal) -> Event {
        Event {
            kind,
            request_id: request_id.to_string(),
            principal: Some(p.display()),
            auth_method: Some(p.auth_method.clone()),
            key_fingerprint: Some(p.key_fingerprint.clone()),
            ..Default::default()
        }
    }
}

pub struct Audit {
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Audit {
    pub fn open(cfg: &crate::config::AuditConfig) -> Result<Audit, AuditError> {
        let sink: Box<dyn Write + Send> = match cfg {
            crate::config::AuditConfig::Stdout => Box::new(std::io::stdout()),
            crate::config::AuditConfig::File(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|source| AuditError::Open { path: p.display().to_string(), source })?;
                // An existing file keeps its mode on open: tighten it.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|source| AuditError::Open { path: p.display().to_string(), source })?;
                Box::new(f)
            }
        };
        Ok(Audit { sink: Mutex::new(sink) })
    }

    /// Audit into memory (tests).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Audit {
        Audit { sink: Mutex::new(w) }
    }

    pub fn record(&self, ev: &Event) {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            #[serde(flatten)]
            ev: &'a Event,
        }
        let time =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let mut line = serde_json::to_vec(&Line { time, ev }).expect("audit events serialise");
        line.push(b'\n');
        let mut sink = self.sink.lock().expect("audit sink poisoned");
        if let Err(e) = sink.write_all(&line).and_then(|_| sink.flush()) {
            tracing::error!(error = %e, "cannot write audit line");
        }
    }
}
