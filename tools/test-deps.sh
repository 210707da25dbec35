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
# htpasswd with bcrypt, for the registry's Basic auth in the pull-credentials test.
apt_install apache2-utils
