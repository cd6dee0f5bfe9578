# Sourced by profile.sh and heap.sh, after their arguments are read: checks the tools,
# builds what is missing, and kills what the script starts when it exits.
#
# In: $script (the script's name, for messages), $root, $out, $nexus (empty: build and
# run this checkout's `nexus`). Out: $release (the release directory, where nexus-mock
# is), $nexus (the binary to run), pids (append each started process to it).
for tool in valgrind oha; do
  if ! command -v "$tool" >/dev/null; then
    case "$tool" in
      oha) echo "$script: oha is not on PATH: cargo install oha --locked" >&2 ;;
      *) echo "$script: $tool is not installed" >&2 ;;
    esac
    exit 1
  fi
done
mkdir -p "$out"
release="$root/target/release"
if [ -z "$nexus" ]; then
  (cd "$root" && cargo build --release -q -p nexus-cli -p nexus-testkit --bins)
  nexus="$release/nexus"
else
  (cd "$root" && cargo build --release -q -p nexus-testkit --bins)
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# Waits (up to 2 minutes: valgrind starts slowly) until the gateway on port $1 answers
# /health (or the path $2).
wait_healthy() {
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$1${2:-/health}" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
}
