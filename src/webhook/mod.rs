//! The Kubernetes mutating admission webhook, as pure functions: an `AdmissionReview` (JSON) in,
//! an `AdmissionReview` with a JSONPatch out. Pods annotated `gocred.dev/inject: "true"` get a
//! projected service-account token (audience `gocred`), an in-memory volume, the `gocred-init`
//! init container that installs the helper, and the environment that points `go` and `git` at the
//! broker. Everything else is allowed unchanged, and a pod is never patched twice.
//!
//! The names here (annotations, env variables, paths) are a contract with `gocred agent
//! --install` and the helpers running in the pod: see the constants below.
//!
//! Must not: do I/O, log, import axum, or patch a pod that did not ask for it (or the broker's
//! own pods).

mod annotations;
mod envelope;
mod patch;
#[cfg(test)]
mod tests;

// The plain settings types and the validators the config shares live in the config (which
// must not depend on this module); every `crate::webhook::...` path keeps working.
pub use crate::config::webhook::{
    DEFAULT_GOPROXY_FALLBACK, DEFAULT_TOKEN_AUDIENCE, DEFAULT_TOKEN_EXPIRATION_SECONDS, InjectMode, InjectSettings,
    OnMalformed, Resources, parse_resources, validate_module_pattern,
};

use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

/// `"true"` selects a pod for injection (`"false"` or absent: left alone).
pub const ANNOTATION_INJECT: &str = "gocred.dev/inject";
/// Set by the patch (value [`INJECTED_VERSION`]); a pod carrying it is never patched again.
pub const ANNOTATION_INJECTED: &str = "gocred.dev/injected";
/// Comma-separated module patterns (GOPRIVATE syntax), replacing the configured defaults.
pub const ANNOTATION_MODULES: &str = "gocred.dev/modules";
/// `goproxy` or `git`.
pub const ANNOTATION_MODE: &str = "gocred.dev/mode";
/// Comma-separated names of the containers to configure (default: all of them).
pub const ANNOTATION_CONTAINERS: &str = "gocred.dev/containers";
/// `cpu=50m,memory=32Mi`: requests and limits of the init container.
pub const ANNOTATION_INIT_RESOURCES: &str = "gocred.dev/init-resources";
/// The value of [`ANNOTATION_INJECTED`].
pub const INJECTED_VERSION: &str = "v1";
/// Pods with this label value under `app.kubernetes.io/name` are the broker's own: never patched.
pub const BROKER_APP_NAME: &str = "gocred";

/// The init container that installs the helper into [`SHARED_DIR`].
pub const INIT_CONTAINER: &str = "gocred-init";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "gocred-token";
/// The in-memory volume shared by the init container and the workload.
pub const SHARED_VOLUME: &str = "gocred";
/// Where [`SHARED_VOLUME`] is mounted in every container.
pub const SHARED_DIR: &str = "/gocred";
/// Where [`TOKEN_VOLUME`] is mounted (read-only) in the workload containers.
pub const TOKEN_DIR: &str = "/var/run/secrets/gocred.dev";
/// The token file inside [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "/var/run/secrets/gocred.dev/token";
/// Size limit of the in-memory volume (the helper binary, git config, CA, session state).
pub const SHARED_VOLUME_SIZE: &str = "64Mi";
/// The init container's arguments.
pub const INIT_ARGS: [&str; 3] = ["agent", "--install", SHARED_DIR];
/// The user the init container runs as when the pod does not name a non-root user.
pub const INIT_USER: i64 = 65532;

/// Environment variable names and the fixed values the patch sets.
pub mod env {
    /// The broker's base URL (both the init container and the workload).
    pub const BROKER: &str = "GOCRED_BROKER";
    /// Init container: comma-separated module patterns.
    pub const MODULES: &str = "GOCRED_MODULES";
    /// Init container: `goproxy` or `git`.
    pub const INJECT_MODE: &str = "GOCRED_INJECT_MODE";
    /// Init container: the broker's CA bundle (PEM), when it is private.
    pub const CA_PEM: &str = "GOCRED_CA_PEM";
    /// Hosts the broker proxies with git smart HTTP (comma-separated): `insteadOf` rewrites.
    pub const GIT_HOSTS: &str = "GOCRED_GIT_HOSTS";
    pub const TOKEN_FILE: &str = "GOCRED_TOKEN_FILE";
    pub const STATE_DIR: &str = "GOCRED_STATE_DIR";
    pub const STATE_DIR_VALUE: &str = "/gocred/state";
    pub const GOAUTH_VALUE: &str = "/gocred/bin/gocred goauth";
    pub const GIT_CONFIG_GLOBAL_VALUE: &str = "/gocred/gitconfig";
    pub const CA_FILE_VALUE: &str = "/gocred/ca.pem";
    /// Go and OpenSSL read every directory listed here *in addition to* their default bundle
    /// file, so the workload image's own roots stay trusted (unlike `SSL_CERT_FILE`).
    pub const CERT_DIR_VALUE: &str = "/gocred/certs:/etc/ssl/certs:/etc/pki/tls/certs";
    /// The CA the gocred helper trusts for the broker, on top of the system roots.
    pub const CA_CERT: &str = "GOCRED_CA_CERT";
}

/// A review that could not be answered with an `AdmissionReview` (the HTTP layer answers 400,
/// or 500 for [`WebhookError::EncodeReview`]).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot parse the AdmissionReview: {0}")]
    ParseReview(#[source] serde_json::Error),
    #[error("expected an admission.k8s.io/v1 AdmissionReview, got apiVersion `{api_version}` kind `{kind}`")]
    CheckReviewType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    ReadRequest,
    #[error("cannot read the pod's AdmissionReview: {0}")]
    ParsePod(#[source] serde_json::Error),
    #[error("cannot encode the AdmissionReview response: {0}")]
    EncodeReview(#[source] serde_json::Error),
}

/// What a review did (for the broker's log and metrics; never sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a pod creation, not asked for, already injected, or the broker's own pod.
    Skipped,
    /// Patched.
    Injected,
    /// Refused (`on_malformed = "deny"`) with this message.
    Denied(String),
    /// Admitted unchanged (`on_malformed = "allow"`) with this warning.
    Warned(String),
}

/// An answered review.
#[derive(Debug)]
pub struct Reviewed {
    /// The `AdmissionReview` JSON to send back.
    pub body: Vec<u8>,
    /// The request's uid (echoed in the response).
    pub uid: String,
    pub outcome: Outcome,
}

/// Answer an `AdmissionReview` (JSON) with an `AdmissionReview` (JSON) carrying the same uid.
pub fn review(body: &[u8], settings: &InjectSettings) -> Result<Vec<u8>, WebhookError> {
    review_detailed(body, settings).map(|r| r.body)
}

/// [`review`], also saying what was done.
pub fn review_detailed(body: &[u8], settings: &InjectSettings) -> Result<Reviewed, WebhookError> {
    // A first, cheap look (most pods a webhook sees did not ask for anything).
    let env: envelope::Envelope = serde_json::from_slice(body).map_err(WebhookError::ParseReview)?;
    if env.kind != kube::core::admission::META_KIND || env.api_version != kube::core::admission::META_API_VERSION_V1 {
        return Err(WebhookError::CheckReviewType { api_version: env.api_version.into(), kind: env.kind.into() });
    }
    let req = env.request.ok_or(WebhookError::ReadRequest)?;
    // The same decisions as `mutate` for these cases, without reading the whole pod.
    let asked = !matches!(req.inject_annotation(), None | Some("false"));
    if !(req.is_pod() && req.operation == "CREATE" && asked) {
        let body = envelope::allow(&req.uid).map_err(WebhookError::EncodeReview)?;
        return Ok(Reviewed { body, uid: req.uid.into_owned(), outcome: Outcome::Skipped });
    }
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).map_err(WebhookError::ParsePod)?;
    let req: AdmissionRequest<Pod> = review.try_into().map_err(|_| WebhookError::ReadRequest)?;
    let (response, outcome) = mutate_detailed(&req, settings);
    let body = envelope::encode(&response).map_err(WebhookError::EncodeReview)?;
    Ok(Reviewed { body, uid: response.uid, outcome })
}

/// The response to one pod admission request: allowed unchanged, allowed with a JSONPatch, or
/// denied (a malformed request with `on_malformed = "deny"`).
pub fn mutate(req: &AdmissionRequest<Pod>, settings: &InjectSettings) -> AdmissionResponse {
    mutate_detailed(req, settings).0
}

fn mutate_detailed(req: &AdmissionRequest<Pod>, settings: &InjectSettings) -> (AdmissionResponse, Outcome) {
    let resp = AdmissionResponse::from(req);
    // Containers and volumes of an existing pod cannot change: only creations are patched.
    let (Operation::Create, Some(pod)) = (&req.operation, &req.object) else {
        return (resp, Outcome::Skipped);
    };
    let refusal = match annotations::wanted(pod, settings) {
        Ok(None) => return (resp, Outcome::Skipped),
        Ok(Some(wanted)) => match patch::build(pod, settings, &wanted) {
            Ok(ops) => {
                return match resp.with_patch(ops) {
                    Ok(r) => (r, Outcome::Injected),
                    Err(e) => {
                        let msg = format!("gocred: cannot encode the patch: {e}");
                        (deny(AdmissionResponse::from(req), &msg), Outcome::Denied(msg))
                    }
                };
            }
            Err(conflict) => conflict,
        },
        Err(malformed) => malformed,
    };
    let msg = format!("gocred: {refusal}");
    match settings.on_malformed {
        OnMalformed::Deny => (deny(resp, &msg), Outcome::Denied(msg)),
        OnMalformed::Allow => {
            let mut r = resp;
            let warning = format!("{msg}; the pod was admitted without gocred injection");
            r.warnings = Some(vec![warning.clone()]);
            (r, Outcome::Warned(warning))
        }
    }
}

fn deny(resp: AdmissionResponse, msg: &str) -> AdmissionResponse {
    let mut r = resp.deny(msg);
    r.result = Status::failure(msg, "BadRequest").with_code(400);
    r
}
