#!/usr/bin/env bash
# bench_kernels.sh: the kernel and decode benchmark of issue 3 in one run.
#   scripts/bench_kernels.sh [LAYERS] [extra flash-moe bench options]
# Writes (once) a random-weight Qwen3-30B-A3B-shaped MLX 4-bit g64 checkpoint with LAYERS
# layers (default 6: every per-layer shape is real, only the depth is cut so that it stays
# resident next to other work) under .bench/ (git-ignored), then runs
#   flash-moe bench --model DIR
# which prints the read bandwidth (1 and all threads, the best of seven read loops of 1-8
# streams per thread with and without software prefetch, on 2 MiB and 4 KiB pages; the
# plain one-stream loop's rate beside it), the Q4/Q8/BF16 matvec GB/s next to it (the best pass; with all threads also
# the mean of the passes, the rate decode meets; and each kernel's rate on a matrix that
# stays in the cache, its arithmetic's ceiling), and the decode tok/s next to the bound
# (active bytes per token / the best read rate of the run), with all experts resident.
# Buffers and matrices are sized from the last-level cache (>= 16x and 8x it), so no
# figure but the named ceiling is a cache rate. The memory's rate on a shared VM moves
# within seconds (35 to 68 GB/s seen here), so the decode is also measured in rounds of 8
# tokens, each followed by one read pass, and the median round is put next to its own pass
# ("paired"). FM_PHASES=1 logs the decode time per phase and the thread pool's waits. The
# summary at the end repeats the bandwidth, Q4 and DECODE VS BOUND lines. The machine
# should be otherwise idle.
set -eu
cd "$(dirname "$0")/.."
BIN=${FM_BIN:-build/flash-moe}
LAYERS=${1:-6}
[ $# -gt 0 ] && shift
DIR=.bench/qwen3-30b-a3b-q4g64-l$LAYERS
if [ ! -f "$DIR/config.json" ]; then
    "$BIN" synth "$DIR" --preset qwen3-30b-a3b --layers "$LAYERS" -q 4 --group 64 --seed 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$BIN" bench --model "$DIR" --cache-dir "" --seconds 1 --decode 32 "$@" | tee "$out"
echo "---- summary"
grep -E "^memory read bandwidth \(|^  best loops|^matvec Q4 g64 \(|^DECODE VS BOUND" "$out"
