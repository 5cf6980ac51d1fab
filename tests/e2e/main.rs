//! gocred's end-to-end tests: one test binary, real peers (OpenBao, ...) started on free loopback
//! ports by [`harness`], the real `gocred` binary spawned as a process.
//!
//! Peers are installed by `tests/peers/install.sh` (the README's test command runs it). A test
//! whose peer is missing fails with a message saying how to install it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod chart;
mod docs;
mod doctor;
mod faults;
mod foundation;
mod gitmod;
mod hardening;
mod harness;
mod injected;
#[path = "../kit/mod.rs"]
mod kit;
mod layering;
mod oidc;
mod proxy;
mod public;
mod secrets_cli;
mod ssh;
mod store;
mod tunnel;
mod vault_auth;
mod webhook;
