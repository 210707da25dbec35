#!/usr/bin/env bash
# Wayplug against nginx and haproxy: installs the peers (Debian packages),
# builds release, runs every scenario in interleaved rounds and writes
# BENCHMARKS.md and bench/results.json. About 10 minutes; `--quick` takes two.
# Arguments are passed to wayplug-bench (e.g. --quick, --only wayplug-l7).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in nginx-light haproxy wrk; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    echo "bench: installing ${missing[*]} from Debian" >&2
    "${sudo[@]}" apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
for tool in nginx haproxy wrk taskset; do
    command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null \
        || { echo "bench: $tool is missing after the install" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "bench: needs two CPUs (load on CPU 0, the proxy on CPU 1)" >&2
    exit 1
fi

# On a machine shared with other builds, take the same lock they do.
cargo_() {
    if [ -e /tmp/wayplug-cargo.lock ]; then flock /tmp/wayplug-cargo.lock cargo "$@"; else cargo "$@"; fi
}
# The plugins it loads are built for these targets (a no-op when present).
rustup target add wasm32-wasip1 wasm32-wasip2 >&2
cargo_ build --release -p wayplug --bin wayplug -p wayplug-bench --bin wayplug-bench

# The harness itself (and its in-process load generator) stays on CPU 0.
exec taskset -c 0 target/release/wayplug-bench --wayplug target/release/wayplug "$@"
