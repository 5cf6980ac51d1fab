//! Module serving around the store: which GOPROXY answers are immutable (`.info`, `.mod`,
//! `.zip` of a canonical version) and come from the store once stored; the short-lived cache of
//! `@v/list` and `@latest` (fresh for `store.list_ttl`, served stale when the upstream fails, a
//! short negative cache for "does not exist"). The caller has authorized the module path; a
//! stored artifact is served only after `download` is also decided on the path it was fetched
//! as (in its authenticated head).
//!
//! Must not: import axum or choose status codes; fail a download because the store failed (a
//! store error is logged, counted, and the upstream used instead).

use super::Broker;
use super::access::{AccessError, Caller, authorize};
use crate::audit::Event;
use crate::modfetch::Request;
use crate::modstore::{Ingested, Kind, ModStore, ObjectName, StoreError, Stored};
use crate::policy::{Action, Resource};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stored name of an immutable answer, when `req` is one.
pub fn immutable(module: &str, req: &Request) -> Option<ObjectName> {
    let (v, kind) = match req {
        Request::Info(v) => (v, Kind::Info),
        Request::Mod(v) => (v, Kind::Mod),
        Request::Zip(v) => (v, Kind::Zip),
        Request::List | Request::Latest => return None,
    };
    (crate::modfetch::semver::canonical_version(v) == *v && !v.is_empty()).then(|| ObjectName {
        module: module.to_string(),
        version: v.clone(),
        kind,
    })
}

/// A stored artifact `caller` may have: looked up, and `download` decided on the path it was
/// fetched as. `Ok(None)`: not stored, or the store failed (logged, counted, quarantined when
/// it failed a check) — fetch from the upstream.
pub async fn stored(
    b: &Broker,
    store: &Arc<ModStore>,
    caller: &Caller,
    upstream: &str,
    module: &str,
    name: &ObjectName,
) -> Result<Option<Stored>, AccessError> {
    match store.get(name).await {
        Ok(Some(obj)) => {
            if obj.head.served_as != module {
                let r = Resource::module(&obj.head.served_as, upstream);
                authorize(b, &caller.request_id, &caller.principal, Action::Download, &r)?;
            }
            Ok(Some(obj))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            report(b, store, caller, upstream, name, &e).await;
            Ok(None)
        }
    }
}

/// Log, count and audit a store failure (an integrity failure also quarantines the object).
async fn report(b: &Broker, store: &ModStore, caller: &Caller, upstream: &str, name: &ObjectName, e: &StoreError) {
    match e {
        StoreError::Integrity { reason, .. } => {
            store.stats.integrity_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(object = %name, %reason, "stored object failed its integrity check; quarantined, fetching again");
            store.quarantine(name).await;
        }
        StoreError::Changed { .. } => tracing::warn!(object = %name, error = %e, "upstream changed a served version"),
        other => {
            store.stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(object = %name, error = %crate::error_chain(other), "module store unavailable; using the upstream");
        }
    }
    b.audit.record(&Event {
        action: "store".into(),
        resource: name.to_string(),
        upstream: Some(upstream.to_string()),
        decision: "error",
        reason: e.to_string(),
        ..Event::about("proxy", &caller.request_id, &caller.principal)
    });
}

/// Keep the artifact fetched into `file` and return it as stored. `Ok(None)`: the store failed
/// (serve `file` itself). `Err`: the upstream answered differently from what was first served,
/// and nothing was stored in its place — never passed on.
pub async fn keep(
    b: &Broker,
    store: &Arc<ModStore>,
    caller: &Caller,
    upstream: &str,
    served_as: &str,
    name: &ObjectName,
    file: &Path,
) -> Result<Option<Stored>, StoreError> {
    store.stats.misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kept = keep_one(b, store, caller, upstream, served_as, name, file).await?;
    // Another writer's object may have been fetched as another path: decided on that too.
    if let Some(s) = &kept
        && s.head.served_as != served_as
        && s.head.served_as != name.module
    {
        let r = Resource::module(&s.head.served_as, upstream);
        if authorize(b, &caller.request_id, &caller.principal, Action::Download, &r).is_err() {
            return Ok(None);
        }
    }
    Ok(kept)
}

async fn keep_one(
    b: &Broker,
    store: &Arc<ModStore>,
    caller: &Caller,
    upstream: &str,
    served_as: &str,
    name: &ObjectName,
    file: &Path,
) -> Result<Option<Stored>, StoreError> {
    match store.ingest(name, served_as, upstream, file).await {
        Ok(Ingested::Stored(s)) => Ok(Some(s)),
        Ok(Ingested::Kept { stored, fetched_sha256 }) => {
            let e = StoreError::Changed {
                name: name.to_string(),
                recorded: stored.head.sha256.clone(),
                fetched: fetched_sha256,
            };
            report(b, store, caller, upstream, name, &e).await;
            Ok(Some(stored))
        }
        Err(e @ StoreError::Changed { .. }) => {
            report(b, store, caller, upstream, name, &e).await;
            Err(e)
        }
        Err(e) => {
            report(b, store, caller, upstream, name, &e).await;
            Ok(None)
        }
    }
}

/// A cached `@v/list` or `@latest` answer.
#[derive(Clone, Debug)]
pub enum Listed {
    Found {
        body: String,
        json: bool,
    },
    /// The upstream said it does not exist (with its line).
    Missing(String),
}

/// (upstream name, module, `@latest`?) → a list answer.
pub type ListKey = (String, String, bool);

/// Lists by [`ListKey`]: the latest answer with when it was fetched, and the last found one
/// (what is served stale when the upstream fails, even after a "does not exist").
#[derive(Default)]
pub struct ListCache {
    map: Mutex<HashMap<ListKey, ListEntry>>,
}

struct ListEntry {
    at: Instant,
    latest: Listed,
    found: Option<Listed>,
}

/// How a list answer was obtained (for the audit line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Cached,
    Fetched,
    /// The upstream failed; this is older than `list_ttl`.
    Stale,
}

impl ListCache {
    /// A fresh answer (found within `ttl`, missing within `negative`).
    pub fn fresh(&self, key: &ListKey, ttl: Duration, negative: Duration) -> Option<Listed> {
        let g = self.map.lock().expect("list cache poisoned");
        let e = g.get(key)?;
        let limit = if matches!(e.latest, Listed::Found { .. }) { ttl } else { negative };
        (e.at.elapsed() < limit).then(|| e.latest.clone())
    }

    /// The last found answer, however old: what the broker serves when the upstream fails.
    pub fn stale(&self, key: &ListKey) -> Option<Listed> {
        self.map.lock().expect("list cache poisoned").get(key).and_then(|e| e.found.clone())
    }

    pub fn put(&self, key: ListKey, l: Listed) {
        let mut g = self.map.lock().expect("list cache poisoned");
        if g.len() > 20_000 {
            g.retain(|_, e| e.at.elapsed() < Duration::from_secs(3600));
        }
        // A "missing" keeps the last found answer as the stale fallback.
        let found = match &l {
            Listed::Found { .. } => Some(l.clone()),
            Listed::Missing(_) => g.get(&key).and_then(|e| e.found.clone()),
        };
        g.insert(key, ListEntry { at: Instant::now(), latest: l, found });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_answer_keeps_the_last_found_list_for_stale_serving() {
        let c = ListCache::default();
        let k: ListKey = ("up".into(), "corp.test/m".into(), false);
        let (ttl, neg) = (Duration::from_secs(60), Duration::from_secs(10));
        assert!(c.fresh(&k, ttl, neg).is_none() && c.stale(&k).is_none());
        c.put(k.clone(), Listed::Found { body: "v1.0.0\n".into(), json: false });
        assert!(matches!(c.fresh(&k, ttl, neg), Some(Listed::Found { .. })));
        c.put(k.clone(), Listed::Missing("not found".into()));
        assert!(matches!(c.fresh(&k, ttl, neg), Some(Listed::Missing(_))), "the latest answer is the 404");
        assert!(matches!(c.stale(&k), Some(Listed::Found { body, .. }) if body == "v1.0.0\n"));
        assert!(c.fresh(&k, ttl, Duration::ZERO).is_none(), "a negative answer expires on its own TTL");
    }
}
