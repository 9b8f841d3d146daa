#!/usr/bin/env bash
# Builds the release binaries: aegis and aegisd, and the statically linked guest harness, which
# is copied to target/release/guest/ (aegisd looks for it there). Not target/release/ itself:
# `cargo test --workspace` writes its own, dynamically linked aegis-harness there.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
host="$(rustc -vV | awk '/^host:/ {print $2}')"
cargo build --release --locked --bins
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked -p aegis-harness --target "$host"
install -D -m 755 "target/$host/release/aegis-harness" target/release/guest/aegis-harness
