//! `POST /v1/admission`: the Kubernetes mutating admission webhook (AdmissionReview v1 in and
//! out). The decision is [`crate::webhook::review`]'s; this handler only moves bytes, counts
//! outcomes and logs them. Served only when `[webhook] enabled = true`.
//!
//! kube-apiserver authenticates the broker by its TLS certificate (the webhook configuration's
//! `caBundle`); the review itself carries no credential, and the answer contains none.

use super::AppState;
use super::error::ApiError;
use crate::webhook::{InjectSettings, Outcome};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;

/// The largest AdmissionReview accepted. kube-apiserver limits objects to about 1.5 MiB and a
/// review carries at most two of them (object and oldObject).
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// The webhook route, when the webhook is enabled (an empty router otherwise).
pub fn routes(enabled: bool) -> Router<AppState> {
    match enabled {
        true => Router::new().route("/v1/admission", post(admission).layer(DefaultBodyLimit::max(BODY_LIMIT))),
        false => Router::new(),
    }
}

async fn admission(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let settings: &InjectSettings = state.webhook().ok_or(ApiError::NotFound)?;
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("an AdmissionReview may be at most {} MiB", BODY_LIMIT >> 20))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    let reviewed = crate::webhook::review_detailed(&body, settings)?;
    match &reviewed.outcome {
        Outcome::Skipped => {
            state.metrics.inc("gocred_webhook_skipped_total");
            tracing::debug!(uid = %reviewed.uid, "admission review: unchanged");
        }
        Outcome::Injected => {
            state.metrics.inc("gocred_webhook_injected_total");
            tracing::info!(uid = %reviewed.uid, "admission review: pod injected");
        }
        Outcome::Denied(m) => {
            state.metrics.inc("gocred_webhook_denied_total");
            tracing::info!(uid = %reviewed.uid, reason = %m, "admission review: pod refused");
        }
        Outcome::Warned(m) => {
            state.metrics.inc("gocred_webhook_warned_total");
            tracing::info!(uid = %reviewed.uid, reason = %m, "admission review: pod admitted without injection");
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], reviewed.body))
}
