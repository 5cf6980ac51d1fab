//! The e2e tests' view of the test kit (`tests/kit/`): every helper, re-exported.

pub use crate::kit::*;
