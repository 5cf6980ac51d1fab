//! gocred — a credential broker for private Go modules.
//!
//! Callers prove who they are, get a short-lived token bound to a key they hold, and the broker
//! keeps the real upstream credentials in Vault/OpenBao (or an encrypted local file).
//!
//! # Module map (data flows one way, top to bottom)
//!
//! ```text
//! main.rs → cli ─┬─ serve/policy commands → server → http → service → auth, policy, token, proxy,
//!                │                                                 secrets, keys, revocation, webhook …
//!                └─ client commands → client ───────────────┐
//!                                                            ├─→ proto (wire formats both sides speak)
//!                        http, service, auth ───────────────┘
//! ```
//!
//! | module      | owns                                                                 | must not                              |
//! |-------------|----------------------------------------------------------------------|---------------------------------------|
//! | [`proto`]   | every wire format client and broker share: token/proof alphabets and encodings, login messages, token/revoke requests and answers, the JSON error body, `/.well-known/gocred` metadata, URL/path rules | import any other gocred module |
//! | [`server`]  | `run(listener, config, shutdown)`: start the services, their background loops and the HTTP server | parse config or print to the terminal |
//! | [`http`]    | axum routes, request ids, metrics middleware, the one error → status map ([`http::error`]), serving on a socket ([`http::serve`]); `gitloop`, the loopback git door through which the broker's own git reaches upstreams | hold business logic |
//! | [`service`] | [`service::Broker`] (every domain service of one process), `access` (token + proof → Caller, policy questions), `session` (login, exchange, refresh, revoke), `tunnel` (SSH tunnels), `meta`, `fallback` (a module fetch tried on the primary, then its mirrors), named `background` loops | import axum or choose status codes |
//! | [`auth`]    | SSH login (sealed challenges, authorized keys, certificates), OIDC subject tokens (issuers, JWKS cache, claim mapping), proofs, [`auth::Principal`] | mint tokens, decide policy |
//! | [`token`]   | EdDSA access tokens: mint, verify (strict `alg`), refresh, revocation check | accept any `alg` but EdDSA |
//! | [`revocation`] | the shared revocation list in the secrets backend                   | block requests on the backend         |
//! | [`policy`]  | Cedar policies: `load` (file:line diagnostics), `decide`, `engine` (reload, cache), `dev` | talk HTTP, do I/O beyond the policy dir |
//! | [`audit`]   | one JSON line per authn/authz decision                               | record tokens, proofs or keys         |
//! | [`proxy`]   | upstream clients, credential cache, header hygiene, streaming forward, route resolution; `resilience` (circuit breakers, the retry budget, backoff), retries before the first byte, mirrors in order | decide who may fetch what |
//! | [`modfetch`] | git-hosted modules over GOPROXY with the go command's semantics: bare mirrors, `git` run as the go command runs it, versions, pseudo-versions, `.info`/`.mod`/`.zip` | decide who may fetch, know HTTP, put a credential on argv or in env |
//! | [`modstore`] | the module store: every canonical `.info`/`.mod`/`.zip` served, write-once, AES-256-GCM sealed (segments bound to a head naming module, version, kind), local dir (LRU cap) or S3 (conditional create), ledger, quarantine | decide who may read, know HTTP, fail a download because the store is down |
//! | [`keys`]    | Ed25519 signing key set, rotation, JWKS                              | talk HTTP                             |
//! | [`health`]  | readiness: probing the secrets backend, grace period                 | decide HTTP status codes              |
//! | [`secrets`] | one interface over the `file` (AES-256-GCM) and `vault` backends     | log or format secret values           |
//! | [`config`]  | TOML + `GOCRED_...` env + flags → validated, immutable [`config::Config`], one validator per section | do I/O beyond the files it names; import `webhook` |
//! | [`tls`]     | rustls server config, the `--dev` self-signed CA                     | choose what to serve                  |
//! | [`metrics`] | Prometheus counters/histograms and their text rendering              | know about axum                       |
//! | [`ratelimit`] | per-client and per-principal token buckets                         | know about HTTP                       |
//! | [`conn`]    | connection caps and idle timeouts below HTTP                         | parse requests                        |
//! | [`webhook`] | Kubernetes admission: AdmissionReview in, JSONPatch injecting token, helper and env out (pure) | do I/O, patch pods that did not ask |
//! | [`fsutil`]  | atomic 0600 file writes, private directories                         |                                       |
//! | [`client`]  | ssh-agent, key files, broker API, session state and renewal, SSO, ambient workload tokens | import a broker module; print |
//! | [`cli`]     | the `gocred` command line (the only place, with `main.rs`, using anyhow) | implement broker logic            |
//!
//! Only [`http`] imports axum. Domain modules return their own `thiserror` enums; `http::error`
//! wraps them (`#[from]`) and alone decides status codes. `tests/e2e/layering.rs` checks these
//! rules against the real imports.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod modfetch;
pub mod modstore;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod ratelimit;
pub mod revocation;
pub mod secrets;
pub mod server;
pub mod service;
pub mod tls;
pub mod token;
pub mod webhook;

/// Seconds since the Unix epoch (the clock every expiry in gocred is measured with).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An error and its sources as one line (`outer: inner: root`), skipping a source whose text the
/// line already contains.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s.replace('\n', " ")
}

/// Install rustls' `ring` provider as the process default (idempotent; client and broker).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("operating system random number generator failed");
    b
}
