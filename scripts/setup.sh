#!/usr/bin/env bash
# Installs what flash-moe needs on Debian 12 (build tools, libraries, test tools) and the
# pinned npm packages the tests use as outside references. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS="build-essential pkg-config libpcre2-dev libutf8proc-dev libmicrohttpd-dev libcjson-dev
      libedit-dev python3 python3-jinja2 python3-regex python3-numpy"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# Node.js and npm: take Debian's only when the machine has none (a Node.js install from
# elsewhere conflicts with Debian's npm package).
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi
# Cross toolchain and qemu for the ARM64 kernel tests (optional: FM_NO_ARM64=1 skips).
if [ -z "${FM_NO_ARM64:-}" ]; then
    for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; do
        dpkg -s "$p" >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
            $SUDO apt-get install -y -q --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; break; }
    done
fi
# Reference tokenizers and API clients (pinned in tests/js/package.json).
if [ -f tests/js/package.json ] && [ ! -d tests/js/node_modules ]; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done"
