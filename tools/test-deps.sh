#!/usr/bin/env bash
# Installs the real peers the test suite starts on loopback (no mocks): each
# step does nothing when its tool is already here, and fails loudly otherwise,
# so a test never skips for want of a peer.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    echo "test-deps: installing ${missing[*]} from Debian" >&2
    "${sudo[@]}" apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# An OCI registry (CNCF distribution) for the plugin-pull tests.
apt_install docker-registry

# The AssemblyScript SDK and compiler for the fixtures in tests/fixtures-as
# (tests/build.rs compiles them): Node.js from Debian, the packages from npm
# exactly as package-lock.json pins them. Skipped when node_modules was
# installed from this very lock file.
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
as_dir=tests/fixtures-as
lock_sum=$(sha256sum "$as_dir/package-lock.json" | cut -d' ' -f1)
stamp="$as_dir/node_modules/.wayplug-lock-sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ] || [ ! -x "$as_dir/node_modules/.bin/asc" ]; then
    echo "test-deps: npm ci in $as_dir" >&2
    (cd "$as_dir" && npm ci --no-audit --no-fund >&2)
    [ -x "$as_dir/node_modules/.bin/asc" ] || { echo "test-deps: asc missing after npm ci" >&2; exit 1; }
    echo "$lock_sum" > "$stamp"
fi

# htpasswd with bcrypt, for the registry's Basic auth in the pull-credentials test.
apt_install apache2-utils
