#!/usr/bin/env bash
# bench_q3n.sh: prefill and decode speed of a synthetic Qwen3-Next-shaped 4-bit model (MLX
# layout, real dimensions, LAYERS layers, EXPERTS experts per layer, random weights so
# routing is near uniform: the worst case for the cache) under a memory budget of FRAC% of
# its expert bytes + resident weights + KV, next to the bound measured in the same run:
#     bound time = bytes read / disk bandwidth + compute time
# Disk bandwidth: O_DIRECT dd reads of the model file (1 stream and 4 streams, the larger
# is used). Compute time: the run's wall time minus the time the forward pass waited for
# reads (the cache's "I/O wait"). The bound is the issue's (I/O time + compute, serial);
# since reads overlap compute, a run can beat it, so the stricter max(I/O, compute) (perfect
# overlap) is printed next to it.
# With LONG=N, the prefill of N tokens is also timed on a small fully resident model of the
# same layer shapes (16 experts, vocabulary 1024): no expert reads and a negligible lm_head,
# so the figure isolates the token mixers (the Gated DeltaNet's chunked form, attention)
# and the dense projections. PARTS=long runs only that.
#   scripts/bench_q3n.sh [BUILD]   env: LAYERS (4), EXPERTS (512), FRAC (40), PREFILL (64),
#                                  DECODE (32), WORK (/tmp/fm_bench_q3n), CACHE_DIR ("" =
#                                  checkpoint reads; a directory = packed store there),
#                                  LONG (0), PARTS (cache = the budgeted runs; long; cache,long)
set -u
BUILD=${1:-build}
BIN=$BUILD/flash-moe
LAYERS=${LAYERS:-4}
EXPERTS=${EXPERTS:-512}
FRAC=${FRAC:-40}
PREFILL=${PREFILL:-64}
DECODE=${DECODE:-32}
WORK=${WORK:-/tmp/fm_bench_q3n}
CACHE_DIR=${CACHE_DIR:-}
LONG=${LONG:-0}
PARTS=${PARTS:-cache}
[ "$LONG" -gt 0 ] && [ "$PARTS" = cache ] && PARTS=cache,long

# Pseudo-random token ids (fixed) below $2 (default 150000 + 1000).
ids() { awk -v n="$1" -v v="${2:-0}" 'BEGIN {s = 12345; for (i = 0; i < n; i++) {s = (s * 1103515245 + 12345) % 2147483648; printf "%s%d", i ? "," : "", v ? s % v : 1000 + s % 150000}}'; }

long_prefill() {
    local S=$WORK/q3n-${LAYERS}l-16e-v1024
    if [ ! -f "$S/model.safetensors" ] || [ ! -f "$S/config.json" ]; then
        /usr/bin/python3 scripts/gen_q3n.py "$S" --layers "$LAYERS" --experts 16 --vocab 1024 || exit 1
    fi
    "$BIN" eval "$S" --tokens "$(ids "$LONG" 1024)" -o "$WORK/long.f32" --ctx $((LONG + 8)) --cache-dir "" --stats \
        >"$WORK/long.log" 2>&1 || { echo "eval long failed:"; tail -5 "$WORK/long.log"; exit 1; }
    awk -v l="$LAYERS" '/^eval:/ {printf "long     %3d tok  resident, %d layers, 16 experts, vocab 1024: %.3f s, %7.2f tok/s prefill\n", $2, l, $5, $2 / $5}' "$WORK/long.log"
    echo "# $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
case ",$PARTS," in *,cache,*) ;; *) mkdir -p "$WORK"; long_prefill; exit 0 ;; esac

M=$WORK/q3n-${LAYERS}l-${EXPERTS}e
F=$M/model.safetensors
if [ ! -f "$F" ] || [ ! -f "$M/config.json" ]; then
    echo "# generating $M (qwen3-next shape, $LAYERS layers, $EXPERTS experts, 4-bit g64)"
    /usr/bin/python3 scripts/gen_q3n.py "$M" --layers "$LAYERS" --experts "$EXPERTS" || exit 1
fi
size=$(stat -c %s "$F")

. "$(dirname "$0")/lib/disk_bw.sh"
disk_bw "$F"

ctx=$((PREFILL + DECODE))
info=$("$BIN" info "$M" --ctx $ctx --capacity 10 --cache-dir "" 2>/dev/null)
resident=$(awk '/^resident weights/ {print $3}' <<<"$info")
allexp=$(awk '/^all experts/ {print $3}' <<<"$info")
kv=$(awk '/^KV cache/ {print $5}' <<<"$info")
ebytes=$(awk '/^bytes per expert/ {print $4}' <<<"$info")
[ -n "$resident" ] && [ -n "$allexp" ] && [ -n "$kv" ] || { echo "flash-moe info failed"; exit 1; }
limit_mib=$(awk -v r="$resident" -v a="$allexp" -v k="$kv" -v f="$FRAC" \
    'BEGIN {printf "%d", (r + k + a * f / 100) / 1048576}')
echo "# model $M: $(awk -v s="$size" 'BEGIN {printf "%.2f GB", s / 1e9}') on disk, resident $(awk -v r="$resident" 'BEGIN {printf "%.0f MiB", r / 1048576}'), experts $(awk -v a="$allexp" 'BEGIN {printf "%.0f MiB", a / 1048576}') ($(awk -v e="$ebytes" 'BEGIN {printf "%.2f MB", e / 1e6}') each), KV $(awk -v k="$kv" 'BEGIN {printf "%.1f MiB", k / 1048576}')"
echo "# --mem-limit ${limit_mib}M = resident + KV + ${FRAC}% of the experts; cache dir '${CACHE_DIR}'; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# Token ids: PREFILL for prefill, PREFILL+DECODE for decode.

run() { # mode (prefill|decode), n tokens
    local extra=() n=$2 log=$WORK/$1.log
    [ "$1" = decode ] && extra=(--decode)
    /usr/bin/time -f "peak RSS %M KiB" "$BIN" eval "$M" --tokens "$(ids "$n")" -o "$WORK/$1.f32" \
        --ctx $ctx --mem-limit "${limit_mib}M" --cache-dir "$CACHE_DIR" --stats "${extra[@]}" >"$log" 2>&1 ||
        { echo "eval $1 failed:"; tail -5 "$log"; exit 1; }
    awk -v bw="$bw" -v mode="$1" '
        /^memory plan/ {cap = $0; sub(/.*capacity /, "", cap); sub(/ per layer.*/, "", cap)}
        /^eval:/ {n = $2; t = $5; for (i = 1; i <= NF; i++) { if ($i == "hits") h = $(i + 1); if ($i == "misses") ms = $(i + 1) }}
        /expert cache: capacity/ {for (i = 1; i <= NF; i++) { if ($i == "read" && $(i - 1) == "MB") mb = $(i - 2); if ($i == "wait") w = $(i + 1) }}
        /^peak RSS/ {rss = $3}
        END {
            io = mb * 1e6 / bw; comp = t - w; bound = io + comp; ob = io > comp ? io : comp
            printf "%-8s %3d tok  capacity %s  hit rate %5.1f%%  read %7.1f MB (%.1f MB/tok)  %7.2f tok/s  | bound %7.2f tok/s (I/O %.3f s + compute %.3f s): %.2fx its time; with perfect overlap max(I/O, compute) %7.2f tok/s: %.2fx  | peak RSS %.0f MiB\n",
                mode, n, cap, 100 * h / (h + ms), mb, mb / n, n / t, n / bound, io, comp, t / bound, n / ob, t / ob, rss / 1024
        }' "$log"
}
run prefill "$PREFILL"
run decode "$((PREFILL + DECODE))"
case ",$PARTS," in *,long,*) long_prefill ;; esac
