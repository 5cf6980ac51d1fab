//! Every wire format the client and the broker both speak, in one place both import: token and
//! proof formats and alphabets, the login messages and namespaces, the token/revoke requests and
//! answers, the JSON error body, the `/.well-known/gocred` metadata, and the URL/path rules.
//! One type serves both directions (the broker serializes it, the client deserializes it).
//!
//! Must not: depend on any other gocred module (it is the shared vocabulary), or do I/O.

pub mod error;
pub mod login;
pub mod meta;
pub mod proof;
pub mod rules;
pub mod token;
pub mod tunnel;
