#!/usr/bin/env bash
# The whole test suite against real peers: installs the peers (idempotent), then formatting,
# lints, unit tests and end-to-end tests. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/peers/install.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
