#!/usr/bin/env bash
# Runs every test program and test script, counts "ok"/"not ok" lines, and ends with
# "N passed, N failed". A program that exits non-zero without a "not ok" line (a crash,
# a sanitizer report) counts as one failure. Each program is bounded by FM_TEST_TIMEOUT.
#   tests/run.sh [filter]      run only tests whose name contains filter
set -u
cd "$(dirname "$0")/.."
BUILD=${FM_BUILD:-build}
export FM_BUILD=$BUILD FM_ROOT=$PWD FM_BIN=$PWD/$BUILD/flash-moe
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
TIMEOUT=${FM_TEST_TIMEOUT:-1200}
filter=${1:-}
pass=0 fail=0
failed_names=()
logdir=$BUILD/test-logs
mkdir -p "$logdir"
# Tests never write into the user's home (the default packed-store directory lives there).
export HOME=$(mktemp -d /tmp/fm-test-home.XXXXXX)
trap 'rm -rf "$HOME"' EXIT

run_one() { # name, command...
    local name=$1; shift
    local log=$logdir/$name.log
    local t0=$SECONDS
    timeout "$TIMEOUT" "$@" >"$log" 2>&1
    local rc=$?
    local p f
    p=$(grep -cE '^[[:space:]]*ok( |$)' "$log")
    f=$(grep -cE '^[[:space:]]*not ok( |$)' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "not ok - $name exited with status $rc" >>"$log"; fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then f=1; echo "not ok - $name ran no checks" >>"$log"; fi
    pass=$((pass + p)); fail=$((fail + f))
    printf '%-40s %4d passed %3d failed  (%ds)\n' "$name" "$p" "$f" $((SECONDS - t0))
    if [ "$f" -ne 0 ]; then
        failed_names+=("$name")
        grep -E '^[[:space:]]*not ok' "$log" | head -20
        tail -20 "$log"
    fi
}

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.o|*.d) continue;; esac
    name=$(basename "$t")
    [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && continue
    if [ -n "${FM_TSAN:-}" ] && ! grep -qx "$name" tests/tsan.list 2>/dev/null; then continue; fi
    run_one "$name" "$t"
done
if [ -z "${FM_TSAN:-}" ]; then
    for t in tests/t_*.sh; do
        [ -f "$t" ] || continue
        name=$(basename "$t" .sh)
        [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && continue
        run_one "$name" bash "$t"
    done
    for t in tests/js/*.test.mjs; do
        [ -f "$t" ] || continue
        name=$(basename "$t" .test.mjs)
        [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && continue
        run_one "$name" node --test --test-reporter=tap "$t"
    done
fi
if [ ${#failed_names[@]} -gt 0 ]; then echo "failed: ${failed_names[*]}"; fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
