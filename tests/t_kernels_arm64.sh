#!/usr/bin/env bash
# t_kernels_arm64.sh: cross-builds the kernel unit test and the gated delta rule test for
# ARM64 (Debian's aarch64-linux-gnu-gcc, static) and runs them under qemu-aarch64, so the
# NEON path is compared with the scalar reference, and the chunked delta rule (4-lane GCC
# vectors, NEON there) with the recurrent one, exactly as on an ARM64 machine. Prints the
# tests' own ok/not ok lines, prefixed "arm64: ". Without the cross compiler this fails,
# unless FM_NO_ARM64 is set.
set -u
ROOT=${FM_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BUILD=${FM_BUILD:-build}
CC=aarch64-linux-gnu-gcc
QEMU=qemu-aarch64
if ! command -v "$CC" >/dev/null 2>&1 || ! command -v "$QEMU" >/dev/null 2>&1; then
    if [ -n "${FM_NO_ARM64:-}" ]; then echo "ok - arm64 skipped (no cross compiler)"; exit 0; fi
    echo "not ok - arm64: $CC or $QEMU not found (run scripts/setup.sh, or set FM_NO_ARM64=1)"
    exit 1
fi
OUTD="$ROOT/$BUILD/arm64"
mkdir -p "$OUTD"
cd "$ROOT" || exit 1
CFLAGS="-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Wno-unused-parameter -Wshadow
        -Wno-sign-compare -fno-strict-aliasing -pthread -static -Iinclude -Isrc"
# cross NAME SOURCES...: builds $OUTD/NAME; prints ok/not ok; returns non-zero on failure.
cross() {
    local name=$1; shift
    # shellcheck disable=SC2086
    if ! "$CC" $CFLAGS -o "$OUTD/$name" "$@" -lm >"$OUTD/$name.build.log" 2>&1; then
        echo "not ok - arm64: cross build of $name failed"
        sed 's/^/# /' "$OUTD/$name.build.log" | head -40
        return 1
    fi
    echo "ok - arm64: $name cross-built with $CC -static"
}
# run NAME: runs it under qemu, printing its lines prefixed; sets out and returns its status.
run() {
    out=$("$QEMU" "$OUTD/$1" 2>&1)
    local rc=$?
    printf '%s\n' "$out" | sed -E 's/^(not ok|ok) - /\1 - arm64: /'
    return $rc
}
status=0
SRC=$(ls src/backend/cpu/*.c | grep -v '_avx' | grep -v '/ops\.c$')
# shellcheck disable=SC2086
if cross test_kernels $SRC src/tensor.c src/common.c tests/test_kernels.c; then
    run test_kernels || status=1
    if ! printf '%s\n' "$out" | grep -q '^# kernel path: neon'; then
        echo "not ok - arm64: the NEON path was not selected"
        status=1
    fi
else
    status=1
fi
if cross test_deltanet src/backend/cpu/deltanet.c tests/test_deltanet.c; then
    run test_deltanet || status=1
    if ! printf '%s\n' "$out" | grep -q '^ok - chunked (dispatched)'; then
        echo "not ok - arm64: test_deltanet ran no comparison"
        status=1
    fi
else
    status=1
fi
exit $status
