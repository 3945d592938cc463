#!/usr/bin/env bash
# t_kernels_arm64.sh: cross-builds the kernel unit test for ARM64 (Debian's
# aarch64-linux-gnu-gcc, static) and runs it under qemu-aarch64, so the NEON path is
# compared with the scalar reference exactly as on an ARM64 machine. Prints the test's
# own ok/not ok lines. Without the cross compiler this fails, unless FM_NO_ARM64 is set.
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
SRC=$(ls src/backend/cpu/*.c | grep -v '_avx' | grep -v '/ops\.c$')
if ! "$CC" -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Wno-unused-parameter -Wshadow \
        -Wno-sign-compare -fno-strict-aliasing -pthread -static -Iinclude -Isrc \
        -o "$OUTD/test_kernels" $SRC src/tensor.c src/common.c tests/test_kernels.c -lm \
        >"$OUTD/build.log" 2>&1; then
    echo "not ok - arm64: cross build of test_kernels failed"
    sed 's/^/# /' "$OUTD/build.log" | head -40
    exit 1
fi
echo "ok - arm64: test_kernels cross-built with $CC -static"
out=$("$QEMU" "$OUTD/test_kernels" 2>&1)
rc=$?
printf '%s\n' "$out"
if ! printf '%s\n' "$out" | grep -q '^# kernel path: neon'; then
    echo "not ok - arm64: the NEON path was not selected"
    exit 1
fi
exit $rc
