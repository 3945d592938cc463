#!/usr/bin/env bash
# t_memory_bound.sh: a model whose routed experts are >= 3x the memory budget runs within
# the budget, exactly, without turning the page cache into a second copy of the model.
#
# Model: `flash-moe synth --preset qwen3-30b-a3b --layers 3 --experts 256` (4-bit): 1.9 GiB
# of experts, 375 MiB of resident weights (kept in $FM_BUILD/t_memory_bound, regenerated
# when missing). Budget: --mem-limit 560M, so the plan gives about 15 of 256 experts per layer.
#
# Checks, for the checkpoint path (--cache-dir "") and the packed store path:
#  - peak RSS (/usr/bin/time %M) <= budget: the plan pays for the working memory (forward
#    scratch, process image and libraries, thread stacks, the eval command's logits) out of
#    the budget before it sizes the expert cache (OVERHEAD = 0).
#  - the page cache holds, of the model file, at most the resident weights (mmapped, paid
#    by the budget) + 64 MiB (readahead around them), measured with mincore after evicting
#    the file first; of the store file, at most 64 MiB.
#  - logits of both paths are bitwise identical, and equal to a run at twice the capacity.
set -u
BIN=${FM_BIN:-build/flash-moe}
WORK=${FM_BUILD:-build}/t_memory_bound
M=$WORK/q30-3l-256e
PY=/usr/bin/python3
BUDGET_MB=560
OVERHEAD_MB=0
mkdir -p "$WORK"

ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }

avail_kb=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
if [ ! -f "$M/model.safetensors" ] && [ "${avail_kb:-0}" -lt 6000000 ]; then
    ok "memory bound # SKIP less than 6 GB of free disk for the 2.3 GB model and its store"
    exit 0
fi
if [ ! -f "$M/model.safetensors" ]; then
    rm -rf "$M"
    "$BIN" synth "$M" --preset qwen3-30b-a3b --layers 3 --experts 256 -q 4 --seed 7 >/dev/null 2>&1 ||
        { nok "synth model"; exit 1; }
fi

# page-cache bytes of a file (mincore), and evicting it (fadvise DONTNEED)
pagecache() {
    "$PY" - "$1" "$2" <<'EOF'
import ctypes, os, sys
op, path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
if op == "evict":
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    print(0)
    sys.exit(0)
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
pg = os.sysconf("SC_PAGE_SIZE")
n = (size + pg - 1) // pg
vec = (ctypes.c_ubyte * n)()
if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
    print(-1)
    sys.exit(0)
print(sum(1 for b in bytes(vec) if b & 1) * pg)
libc.munmap(ctypes.c_void_p(addr), size)
EOF
}

resident=$("$BIN" info "$M" --ctx 64 --capacity 8 --cache-dir "" 2>/dev/null | awk '/^resident weights/ {print $3}')
allexp=$("$BIN" info "$M" --ctx 64 --capacity 8 --cache-dir "" 2>/dev/null | awk '/^all experts/ {print $3}')
budget=$((BUDGET_MB * 1048576))
if [ -n "$allexp" ] && [ "$allexp" -ge $((3 * budget)) ]; then
    ok "model's expert bytes ($((allexp / 1048576)) MiB) >= 3x the budget ($BUDGET_MB MiB)"
else
    nok "model's expert bytes (${allexp:-?}) >= 3x the budget"
fi

TOK=$(seq -s, 11 16)   # 6 tokens decoded one by one: 6 x 3 layers x 8 experts routed
run() { # name, extra args...
    local name=$1; shift
    pagecache evict "$M/model.safetensors" >/dev/null
    /usr/bin/time -f '%M' -o "$WORK/$name.rss" "$BIN" eval "$M" --tokens "$TOK" --decode \
        -o "$WORK/$name.logits" --ctx 64 --stats "$@" >"$WORK/$name.log" 2>&1
    echo $?
}

# 1. checkpoint path
rc=$(run ckpt --mem-limit ${BUDGET_MB}M --cache-dir "")
[ "$rc" = 0 ] && ok "eval at --mem-limit ${BUDGET_MB}M (checkpoint reads)" ||
    { nok "eval at --mem-limit ${BUDGET_MB}M exited $rc"; tail -5 "$WORK/ckpt.log"; }
grep -E "memory plan|eval:" "$WORK/ckpt.log" | sed 's/^/# /'
rss_kb=$(cat "$WORK/ckpt.rss" 2>/dev/null | tail -1)
lim_kb=$(((BUDGET_MB + OVERHEAD_MB) * 1024))
[ -n "$rss_kb" ] && [ "$rss_kb" -le "$lim_kb" ] &&
    ok "peak RSS $((rss_kb / 1024)) MiB <= budget $BUDGET_MB + overhead $OVERHEAD_MB MiB" ||
    nok "peak RSS ${rss_kb:-?} kB <= $lim_kb kB"
cached=$(pagecache count "$M/model.safetensors")
fsize=$(stat -c %s "$M/model.safetensors")
allow=$((resident + 64 * 1048576))
[ "$cached" -ge 0 ] && [ "$cached" -le "$allow" ] &&
    ok "page cache holds $((cached / 1048576)) MiB of the $((fsize / 1048576)) MiB model file (<= resident $((resident / 1048576)) + 64 MiB)" ||
    nok "page cache holds $cached bytes of the model file (allowed $allow)"

# 2. packed store path (packs on first use inside the run)
rm -rf "$WORK/store"
mkdir -p "$WORK/store"
rc=$(run store --mem-limit ${BUDGET_MB}M --cache-dir "$WORK/store")
[ "$rc" = 0 ] && ok "eval with the packed store (packed on first use)" ||
    { nok "eval with the packed store exited $rc"; tail -5 "$WORK/store.log"; }
rss_kb=$(cat "$WORK/store.rss" 2>/dev/null | tail -1)
[ -n "$rss_kb" ] && [ "$rss_kb" -le "$lim_kb" ] &&
    ok "store path: peak RSS $((rss_kb / 1024)) MiB <= $((lim_kb / 1024)) MiB" ||
    nok "store path: peak RSS ${rss_kb:-?} kB <= $lim_kb kB"
sf=$(ls "$WORK"/store/*.fmstore 2>/dev/null | head -1)
if [ -n "$sf" ]; then
    sc=$(pagecache count "$sf")
    [ "$sc" -ge 0 ] && [ "$sc" -le $((64 * 1048576)) ] &&
        ok "page cache holds $((sc / 1048576)) MiB of the $(($(stat -c %s "$sf") / 1048576)) MiB store" ||
        nok "page cache holds $sc bytes of the store"
else
    nok "store file written"
fi
cmp -s "$WORK/ckpt.logits" "$WORK/store.logits" && ok "store path logits bitwise equal to checkpoint path" ||
    nok "store path logits differ"

# 3. twice the capacity: same logits (exact misses)
cap=$(sed -n 's/.*capacity \([0-9]*\) of.*/\1/p' "$WORK/ckpt.log" | head -1)
rc=$(run cap2 --capacity $((2 * ${cap:-8})) --cache-dir "")
[ "$rc" = 0 ] && cmp -s "$WORK/ckpt.logits" "$WORK/cap2.logits" &&
    ok "logits at capacity ${cap:-?} equal those at $((2 * ${cap:-8}))" ||
    nok "logits at capacity ${cap:-?} differ from capacity $((2 * ${cap:-8})) (rc $rc)"
rm -rf "$WORK/store"
