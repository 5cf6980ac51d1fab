//! The AdmissionReview envelope: a cheap first look at a request (borrowing from the body and
//! skipping the object but for its `gocred.dev/inject` annotation, so the many pods that did not
//! ask cost one scan of the bytes), and the response encoding (the patch as base64 text, as
//! kube-apiserver expects a Go `[]byte`).

use kube::core::admission::AdmissionResponse;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    pub api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Request<'a> {
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Gvk<'a>,
    #[serde(borrow)]
    pub resource: Gvr<'a>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub operation: Cow<'a, str>,
    #[serde(borrow, default)]
    pub object: Option<Object<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Gvk<'a> {
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

#[derive(Deserialize)]
pub(super) struct Gvr<'a> {
    #[serde(borrow, default)]
    pub resource: Cow<'a, str>,
}

#[derive(Deserialize)]
pub(super) struct Object<'a> {
    #[serde(borrow, default)]
    metadata: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    annotations: Option<Annotations<'a>>,
}

#[derive(Deserialize)]
struct Annotations<'a> {
    #[serde(rename = "gocred.dev/inject", borrow, default)]
    inject: Option<Cow<'a, str>>,
}

impl Request<'_> {
    /// A pod (not one of its subresources).
    pub fn is_pod(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.version == "v1"
            && self.kind.kind == "Pod"
            && self.resource.resource == "pods"
            && self.sub_resource.as_deref().is_none_or(str::is_empty)
    }

    /// The object's `gocred.dev/inject` annotation.
    pub fn inject_annotation(&self) -> Option<&str> {
        self.object.as_ref()?.metadata.as_ref()?.annotations.as_ref()?.inject.as_deref()
    }
}

#[derive(Serialize)]
struct OutReview<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: OutResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a kube::core::Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
}

/// The `AdmissionReview` (v1) carrying `resp`.
pub(super) fn encode(resp: &AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine;
    let out = OutReview {
        api_version: kube::core::admission::META_API_VERSION_V1,
        kind: kube::core::admission::META_KIND,
        response: OutResponse {
            uid: &resp.uid,
            allowed: resp.allowed,
            // The reason matters only when refused.
            status: (!resp.allowed).then_some(&resp.result),
            patch: resp.patch.as_ref().map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
            patch_type: resp.patch.as_ref().map(|_| "JSONPatch"),
            warnings: resp.warnings.as_deref(),
            audit_annotations: &resp.audit_annotations,
        },
    };
    serde_json::to_vec(&out)
}

/// An allowed, unchanged answer for `uid`.
pub(super) fn allow(uid: &str) -> Result<Vec<u8>, serde_json::Error> {
    let none = std::collections::HashMap::new();
    serde_json::to_vec(&OutReview {
        api_version: kube::core::admission::META_API_VERSION_V1,
        kind: kube::core::admission::META_KIND,
        response: OutResponse {
            uid,
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            warnings: None,
            audit_annotations: &none,
        },
    })
}
