//! The live policy engine: the current set (reloaded on SIGHUP, the old set kept when the new
//! one is broken) and a short decision cache keyed by principal, action and resource.
//!
//! Must not: log (the caller reports reload results) or evaluate without the current set.

use super::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;

/// A cached decision.
pub(super) struct Cached {
    decision: Decision,
    at: Instant,
    /// Policy set generation the decision was made with.
    generation: u64,
}

/// (principal cache key, action, resource).
type CacheKey = (String, Action, Resource);

pub(super) struct Current {
    pub(super) policies: Arc<Policies>,
    /// Bumped on every successful reload, so a decision made with the old set that lands in the
    /// cache after the reload cleared it is never served.
    generation: u64,
}

/// The live engine: the current policy set (reloadable) and a short decision cache.
pub struct PolicyEngine {
    current: RwLock<Current>,
    dir: Option<PathBuf>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("policies", &self.read().policies.len())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// `dir` is where [`PolicyEngine::reload`] re-reads the policies from (`None`: built-in
    /// policies, nothing to reload).
    pub fn new(policies: Policies, dir: Option<PathBuf>) -> PolicyEngine {
        PolicyEngine {
            current: RwLock::new(Current { policies: Arc::new(policies), generation: 0 }),
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Re-read the policy directory (SIGHUP). On success the new set replaces the old one and
    /// the decision cache is cleared; on error the old set stays in force and the error is
    /// returned (the caller logs it). `Ok(None)`: built-in policies, nothing to reload.
    pub fn reload(&self) -> Result<Option<usize>, PolicyError> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let policies = Policies::load_dir(dir)?;
        let n = policies.len();
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            current.policies = Arc::new(policies);
            current.generation += 1;
        }
        self.cache().clear();
        Ok(Some(n))
    }

    /// [`Policies::decide`] with the current set, reusing a decision for the same principal,
    /// action and resource for up to [`DECISION_TTL`].
    pub fn decide(&self, principal: &Principal, action: Action, resource: &Resource) -> Decision {
        let (policies, generation) = {
            let current = self.read();
            (Arc::clone(&current.policies), current.generation)
        };
        // The fingerprint is an entity attribute policies may test, so it is part of the key.
        let key = (format!("{}\u{1f}{}", principal.cache_key(), principal.key_fingerprint), action, resource.clone());
        {
            let mut cache = self.cache();
            match cache.get(&key) {
                Some(c) if c.generation == generation && c.at.elapsed() < DECISION_TTL => {
                    return c.decision.clone();
                }
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        let decision = policies.decide(principal, action, resource);
        let mut cache = self.cache();
        if cache.len() >= DECISION_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Cached { decision: decision.clone(), at: Instant::now(), generation });
        decision
    }

    // Poisoning is ignored: writers only swap an `Arc` / insert or clear entries, so the data is
    // always consistent.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn cache(&self) -> MutexGuard<'_, HashMap<CacheKey, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
