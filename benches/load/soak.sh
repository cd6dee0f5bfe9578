#!/usr/bin/env bash
# Issue 12's soak (not in CI): 10 minutes at 500 requests/s, mixed streamed and not, with
# random upstream faults; reports memory growth, errors by kind and settled spend against
# the mock's own tally. Options are soak.py's (`benches/load/soak.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v oha >/dev/null || { echo "soak.sh: oha is not on PATH; install it with: cargo install oha --locked" >&2; exit 2; }
cargo build --release --quiet -p nexus-cli -p nexus-testkit --bins
exec python3 benches/load/soak.py "$@"
