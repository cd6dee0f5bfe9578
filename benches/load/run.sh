#!/usr/bin/env bash
# Issue 12's performance set in one go (a few minutes): builds the release gateway and
# mock, then runs load.py, which writes a markdown table (target/load/results.md unless
# --out FILE). Options are load.py's (`benches/load/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v oha >/dev/null || { echo "run.sh: oha is not on PATH; install it with: cargo install oha --locked" >&2; exit 2; }
cargo build --release --quiet -p nexus-cli -p nexus-testkit --bins
cargo build --release --quiet -p nexus-gateway --example passthrough
exec python3 benches/load/load.py "$@"
