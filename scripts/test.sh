#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or an already prepared one:
# prepares the machine first (idempotent: system packages, guest kernel, binaries, default image),
# then runs every test of the workspace against real VMs, a real registry and real SQLite files.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
AEGIS_SKIP_HELLO=1 ./setup.sh
# Proves the install steps: every program the tests run (scripts/requirements; the testkit runs
# no other) must come from the package setup.sh installs, and `aegis doctor` must pass.
./setup.sh --check
export PATH="$repo/target/release:$PATH"
# Release profile: the tests drive the release binaries setup.sh just built, and share their
# compiled dependencies.
cargo test --release --locked --workspace --no-fail-fast -- --test-threads="${AEGIS_TEST_THREADS:-2}"
