//! The loops that keep a running broker current, each named after what it keeps: the
//! readiness probe of the secrets backend, signing-key rotation, secrets-backend maintenance
//! (Vault token renewal), revocation-list sync, the module store's data keys (a rotation by
//! `gocred store rotate-key` or another replica), and policy + store-key reload on SIGHUP. Each logs its own
//! failures (once, here) and keeps the last good state.
//!
//! Must not: stop the broker on a failure, or log at WARN for expected states.

use super::Broker;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Start every loop on `tasks` (aborted when the server stops).
pub fn spawn_all(broker: &Arc<Broker>, tasks: &mut JoinSet<()>) {
    tasks.spawn(readiness_probe(broker.clone()));
    tasks.spawn(key_rotation(broker.clone()));
    tasks.spawn(secrets_maintenance(broker.clone()));
    tasks.spawn(revocation_sync(broker.clone()));
    tasks.spawn(policy_reload_on_sighup(broker.clone()));
    tasks.spawn(store_keys_refresh(broker.clone()));
}

/// How often the module store re-reads its data keys (SIGHUP: at once).
pub const STORE_KEYS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Pick up a rotated module-store data key.
pub async fn store_keys_refresh(b: Arc<Broker>) {
    let Some(store) = b.modstore.clone() else { return };
    loop {
        tokio::time::sleep(STORE_KEYS_EVERY).await;
        refresh_store_keys(&store).await;
    }
}

async fn refresh_store_keys(store: &crate::modstore::ModStore) {
    match store.keyring().refresh().await {
        Ok(Some(id)) => tracing::info!(key = %id, "module store data key changed; new objects are sealed under it"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "module store keys refresh failed; keeping the current ones")
        }
    }
}

/// Probe the secrets backend every `secrets.probe_every` (readiness and its grace period).
pub async fn readiness_probe(b: Arc<Broker>) {
    crate::health::probe_loop(&b.store, &b.readiness, &b.metrics, b.config.secrets.probe_every).await
}

/// Pick up rotated signing keys (and rotate them when due).
pub async fn key_rotation(b: Arc<Broker>) {
    loop {
        tokio::time::sleep(b.keys.tick_every()).await;
        match b.keys.tick(crate::unix_now()).await {
            Ok(true) => b.metrics.inc("gocred_key_rotations_total"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "signing key refresh failed; keeping the current keys"),
        }
    }
}

/// Backend upkeep (renewing the Vault token).
pub async fn secrets_maintenance(b: Arc<Broker>) {
    b.store.maintain(&b.metrics).await
}

/// Re-read the shared revocation list every [`crate::revocation::SYNC_EVERY`].
pub async fn revocation_sync(b: Arc<Broker>) {
    loop {
        tokio::time::sleep(crate::revocation::SYNC_EVERY).await;
        if let Err(e) = b.tokens.revocations().sync(crate::unix_now()).await {
            tracing::warn!(error = %e, "revocation list refresh failed; keeping the last one");
        }
    }
}

/// Reload the policy directory on SIGHUP.
pub async fn policy_reload_on_sighup(b: Arc<Broker>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::error!("cannot install SIGHUP handler: policy reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        match b.policy.reload() {
            Ok(Some(n)) => tracing::info!(policies = n, "policies reloaded"),
            Ok(None) => tracing::warn!("policies are built in (no policy directory); nothing to reload"),
            Err(e) => tracing::error!(
                error = %crate::error_chain(&e),
                "policy reload failed; keeping the previous policies"
            ),
        }
        if let Some(store) = &b.modstore {
            refresh_store_keys(store).await;
        }
    }
}
