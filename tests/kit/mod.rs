//! The test kit: real peers started on free loopback ports and cleaned up when their guards
//! drop — processes and paths ([`procs`]), OpenBao ([`openbao`]), the gocred broker and its
//! clients ([`broker`]), ssh-keygen and ssh-agent ([`ssh`]), sshd ([`sshd`]), identity providers ([`oidc`]), and an
//! in-process JWT issuer ([`issuer`], also used by the benchmarks).

#![allow(dead_code)]

pub mod broker;
pub mod issuer;
pub mod oidc;
pub mod openbao;
pub mod procs;
pub mod ssh;
pub mod sshd;

pub use broker::*;
pub use issuer::*;
pub use oidc::*;
pub use openbao::*;
pub use procs::*;
pub use ssh::*;
pub use sshd::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
