#!/usr/bin/env bash
# bench_cache.sh: decode speed of a Qwen3-30B-A3B-shaped 4-bit MoE (random weights, so
# routing is near uniform: the worst case for a cache) at expert-cache capacities of
# 100/50/25/12.5%, next to the I/O bound measured in the same run:
#     bound time per token = bytes read per token / disk bandwidth + compute time per token
# Disk bandwidth: O_DIRECT reads of the model file with dd (1 stream, 4 streams; the larger
# is used). Compute time: the 100% run's decode time per token (it reads nothing).
# The driver (scripts/bench_cache.c, linked against BUILD/libflashmoe.a) prefills WARM
# pseudo-random tokens, then decodes DECODE fresh pseudo-random tokens (teacher forcing).
#
# Optional: TRACE=FILE writes the decode routing of the smallest capacity (for replay).
#   scripts/bench_cache.sh [BUILD]   env: LAYERS (4), WARM (128), DECODE (16),
#                                    WORK (/tmp/fm_bench_cache), STORE (1 = packed store,
#                                    0 = checkpoint reads), PREFETCH (0/1), CAPS ("100 50 25 12.5"),
#                                    COMPUTE_S (compute s/token for the bound when 100 is not in CAPS)
set -u
BUILD=${1:-build}
BIN=$BUILD/flash-moe
LAYERS=${LAYERS:-4}
WARM=${WARM:-128}
DECODE=${DECODE:-16}
WORK=${WORK:-/tmp/fm_bench_cache}
STORE=${STORE:-1}
PREFETCH=${PREFETCH:-0}
CAPS=${CAPS:-100 50 25 12.5}
M=$WORK/q30-${LAYERS}l
mkdir -p "$WORK"
DRV=$WORK/bench_cache
cc -O2 -std=c11 -D_GNU_SOURCE -pthread -Iinclude -Isrc scripts/bench_cache.c "$BUILD/libflashmoe.a" \
    -lpcre2-8 -lutf8proc -lmicrohttpd -lcjson -ledit -lm -lpthread -o "$DRV" || exit 1
if [ ! -f "$M/model.safetensors" ]; then
    echo "# generating $M (qwen3-30b-a3b shape, $LAYERS layers, 4-bit)"
    "$BIN" synth "$M" --preset qwen3-30b-a3b --layers "$LAYERS" -q 4 --seed 1 >/dev/null 2>&1 || exit 1
fi
F=$M/model.safetensors

. "$(dirname "$0")/lib/disk_bw.sh"
disk_bw "$F"

CD=""
if [ "$STORE" = 1 ]; then
    CD=$WORK/store
    "$BIN" pack "$M" --cache-dir "$CD" >/dev/null 2>&1 || { echo "pack failed"; exit 1; }
    echo "# misses read from the packed store: one aligned O_DIRECT read per expert"
else
    echo "# misses read from the checkpoint: O_DIRECT aligned supersets of the 9 arrays of an expert"
fi
echo "# warm-up prefill $WARM tokens, then $DECODE decoded tokens; prefetch $PREFETCH; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" info "$M" --ctx 512 --capacity 8 --cache-dir "" 2>/dev/null | grep -E "^(layers|experts|bytes per expert|all experts|resident)" | sed 's/^/# /'
nexp=$("$BIN" info "$M" --ctx 512 --capacity 8 --cache-dir "" 2>/dev/null | awk '/^experts/ {print $2+0}')

printf "\n%-10s %7s %7s %7s %7s %8s %8s %8s %7s %6s %6s %6s %9s\n" capacity "tok/s" "tok/s" "hit" "MB/tok" "I/O wait" "compute" "bound" "x bound" "x own" "I/O x" "GB/s" "peak RSS"
printf "%-10s %7s %7s %7s %7s %8s %8s %8s %7s %6s %6s %6s %9s\n" "" "mean" "median" "rate" "" "ms/tok" "ms/tok" "tok/s" "" "" "" "reads" ""
compute_s=${COMPUTE_S:-}
for pct in $CAPS; do
    cap=$(awk -v n="$nexp" -v p="$pct" 'BEGIN {c = int(n * p / 100); if (c < 8) c = 8; print c}')
    line=$(FM_NO_WARM=1 "$DRV" "$M" "$cap" "$WARM" "$DECODE" "$CD" "$PREFETCH" ${TRACE:+"$TRACE"} 2>&1 | tail -1)
    case "$line" in capacity=*) ;; *) echo "$pct%: $line"; continue;; esac
    eval "$line"
    [ -z "$compute_s" ] && compute_s=$med_compute_s
    awk -v pct="$pct" -v cap="$capacity" -v tps="$tok_s" -v h="$hits" -v m="$misses" -v b="$bytes" \
        -v n="$DECODE" -v bw="$bw" -v cs="$compute_s" -v w="$io_wait_s" -v mt="$med_tok_s" \
        -v mc="$med_compute_s" -v g="$read_gbps" -v rss="$rss_peak" 'BEGIN {
        bpt = b / n; io = bpt / bw; bound = 1 / (io + cs);
        printf "%5s%% %3d %7.2f %7.2f %6.1f%% %7.1f %8.1f %8.1f %8.2f %7.2f %6.2f %6s %6.2f %5.0f MiB\n", pct, cap, tps,
               1 / mt, 100 * h / (h + m > 0 ? h + m : 1), bpt / 1e6, 1000 * w / n, 1000 * mc, bound,
               bound * mt, mt / (io + mc), (io > 0.0005 ? sprintf("%.2f", (w / n) / io) : "-"), g,
               rss / 1048576 }'
done
echo "# bound = 1 / (bytes per token / disk bandwidth + median compute s per token of the 100% run: ${compute_s:-?} s)"
echo "# x bound = median time per token / bound time per token (target <= 1.3); compute = time - I/O wait"
echo "# x own = median time per token / (bytes per token / disk bandwidth + this run's median compute):"
echo "#         the same bound with the run's own compute time (on a shared machine the compute"
echo "#         time of a run varies by up to 2x from run to run, so the 100% figure is a noisy base)"
echo "# I/O x = I/O wait per token / (bytes per token / disk bandwidth): the cache's read efficiency,"
echo "#         independent of the compute time (which other processes on a shared machine disturb)"
echo "# medians resist other processes' bursts on a shared machine; the mean is shown too"
