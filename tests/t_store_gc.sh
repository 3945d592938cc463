#!/usr/bin/env bash
# t_store_gc.sh: creating a packed expert store cleans the cache directory: stores whose
# model was deleted or changed go, live ones stay, files that are not stores are never
# touched, a store another process holds (flock) is skipped; `flash-moe cache list|clean`
# show and remove them, with an LRU size cap (also FM_CACHE_MAX and --cache-max when a store
# is created). Real files: copies of a small fixture model.
cd "${FM_ROOT:-.}" || exit 1
BIN=${FM_BIN:-build/flash-moe}
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
tmp=$(mktemp -d)
holder=
trap '[ -n "$holder" ] && kill $holder 2>/dev/null; rm -rf "$tmp"' EXIT
fx=tests/fixtures/qwen3_moe_f32
cache=$tmp/cache
for m in a b c d e; do cp -r "$fx" "$tmp/$m"; done
# Another process holding a store open: a shared flock, as every open store has.
hold() { ( exec 9<"$1"; flock -s 9; exec sleep 120 ) & holder=$!; }
pack() { "$BIN" pack "$tmp/$1" --cache-dir "$cache" 2>>"$tmp/pack.err" | tail -1; }
sa=$(pack a); sb=$(pack b); sc=$(pack c)
check "three copies of a model get three stores" \
    bash -c "[ -f '$sa' ] && [ -f '$sb' ] && [ -f '$sc' ] && [ '$sa' != '$sb' ] && [ '$sb' != '$sc' ]"
"$BIN" cache list --cache-dir "$cache" >"$tmp/l0"
check "cache list shows each store live with its model directory" \
    bash -c "[ \$(grep -c '^live .*$tmp/[abc] ' '$tmp/l0') -eq 3 ]"

# Files that are not stores (one even named like a store), a store of an older format,
# pack leftovers: one abandoned an hour ago, one still being written.
echo "my notes" >"$cache/notes.txt"
printf 'this is not a flash-moe store, whatever its name says' >"$cache/0123456789abcdef.fmstore"
{ printf 'FMOESTOR\001\000\000\000'; head -c 8192 /dev/zero; } >"$cache/fedcba9876543210.fmstore"
head -c 8192 /dev/zero >"$cache/1111111111111111.fmstore.tmp.4242"
touch -d '1 hour ago' "$cache/1111111111111111.fmstore.tmp.4242"
head -c 8192 /dev/zero >"$cache/2222222222222222.fmstore.tmp.4243"

rm -r "$tmp/a"                                              # model deleted
touch -d '2021-01-01 00:00' "$tmp/b/model.safetensors"      # model changed
rm -r "$tmp/c"                                              # deleted, but its store is held
hold "$sc"
for _ in $(seq 1 100); do flock -n -x "$sc" true 2>/dev/null || break; sleep 0.05; done

"$BIN" cache list --cache-dir "$cache" >"$tmp/l1"
check "list: deleted model's store is stale, naming the missing file" \
    grep -q "^stale .*$(basename "$sa").*model file missing: $tmp/a/model.safetensors" "$tmp/l1"
check "list: changed model's store is stale, naming the changed file" \
    grep -q "^stale .*$(basename "$sb").*model file changed.*: $tmp/b/model.safetensors" "$tmp/l1"
check "list: the held store is stale and in use" grep -q "^stale,in-use .*$(basename "$sc")" "$tmp/l1"
check "list: older-format store is stale" grep -q "^stale .*fedcba9876543210.fmstore.*older store format 1" "$tmp/l1"
check "list: the file named like a store but not one is not listed" bash -c "! grep -q 0123456789abcdef '$tmp/l1'"

# Creating a store (through a model open, as run/chat/serve do) cleans the directory.
"$BIN" eval "$tmp/d" --tokens 1,2,3 -o "$tmp/logits" --capacity 2 --cache-dir "$cache" 2>"$tmp/eval.err"
check "eval with a cache dir creates the store of model d" bash -c "[ \$(ls '$cache'/*.fmstore | wc -l) -ge 1 ] && grep -q 'packing' '$tmp/eval.err'"
sd=$("$BIN" cache list --cache-dir "$cache" | grep "^live .*$tmp/d " | awk '{print $NF}')
check "the new store is live" test -n "$sd" -a -f "$sd"
check "deleted model's store removed" test ! -e "$sa"
check "changed model's store removed" test ! -e "$sb"
check "store held by another process kept (flock)" test -f "$sc"
check "older-format store removed" test ! -e "$cache/fedcba9876543210.fmstore"
check "abandoned pack file removed" test ! -e "$cache/1111111111111111.fmstore.tmp.4242"
check "pack file written a moment ago kept" test -f "$cache/2222222222222222.fmstore.tmp.4243"
check "non-store file untouched" bash -c "[ \"\$(cat '$cache/notes.txt')\" = 'my notes' ]"
check "file named like a store but not one untouched" grep -q 'not a flash-moe store' "$cache/0123456789abcdef.fmstore"
check "the removals are reported" grep -q "removed .*$(basename "$sa").*model file missing" "$tmp/eval.err"

# The holder goes: clean removes the store.
kill $holder; wait $holder 2>/dev/null; holder=
"$BIN" cache clean --cache-dir "$cache" --dry-run >"$tmp/dry"
check "clean --dry-run names the store and removes nothing" \
    bash -c "grep -q 'would remove .*$(basename "$sc")' '$tmp/dry' && [ -f '$sc' ]"
"$BIN" cache clean --cache-dir "$cache" >"$tmp/clean"
check "clean removes the store once no process holds it" bash -c "[ ! -e '$sc' ] && grep -q 'removed 1 file' '$tmp/clean'"
check "clean keeps the live store" test -f "$sd"

# Size cap: least recently used first, never a store in use.
sb2=$(pack b)
sz=$(stat -c %s "$sd")
touch -d '2 days ago' "$sd"
"$BIN" cache clean --cache-dir "$cache" --max $((sz + sz / 2)) >"$tmp/cap"
check "clean --max evicts the least recently used store" bash -c "[ ! -e '$sd' ] && [ -f '$sb2' ]"
hold "$sb2"
for _ in $(seq 1 100); do flock -n -x "$sb2" true 2>/dev/null || break; sleep 0.05; done
"$BIN" cache clean --cache-dir "$cache" --max 1 >/dev/null
check "clean --max never evicts a store in use" test -f "$sb2"
kill $holder; wait $holder 2>/dev/null; holder=
se=$(FM_CACHE_MAX=1 pack e)
check "FM_CACHE_MAX: creating a store evicts the others, never the new one" \
    bash -c "[ -f '$se' ] && [ ! -e '$sb2' ]"
check "everything that is not ours is still there" \
    bash -c "[ -f '$cache/notes.txt' ] && [ -f '$cache/0123456789abcdef.fmstore' ]"

# --cache-max (every model command): the same cap from the command line, over FM_CACHE_MAX.
cache2=$tmp/cache2
for m in g h i j; do cp -r "$fx" "$tmp/$m"; done
pack2() { env -u FM_CACHE_MAX "$BIN" pack "$tmp/$1" --cache-dir "$cache2" 2>>"$tmp/pack.err" | tail -1; }
sg=$(pack2 g); sh=$(pack2 h)
sz=$(stat -c %s "$sg")
touch -d '2 days ago' "$sg"
touch -d '1 hour ago' "$sh"
env -u FM_CACHE_MAX "$BIN" eval "$tmp/i" --tokens 1,2,3 -o "$tmp/logits_i" --capacity 2 \
    --cache-dir "$cache2" --cache-max $((sz * 5 / 2)) 2>"$tmp/eval_i.err"
si=$("$BIN" cache list --cache-dir "$cache2" | grep "^live .*$tmp/i " | awk '{print $NF}')
check "--cache-max below three stores: eval evicts the least recently used, keeps the newer and the new" \
    bash -c "[ -n '$si' ] && [ -f '$si' ] && [ ! -e '$sg' ] && [ -f '$sh' ]"
check "--cache-max: the eviction is reported with the cap" \
    grep -q "removed .*$(basename "$sg").*least recently used, over the $(awk "BEGIN{printf \"%.1f\", $sz * 5 / 2 / 1048576}") MiB cap" "$tmp/eval_i.err"
FM_CACHE_MAX=1 "$BIN" info "$tmp/j" --capacity 2 --cache-dir "$cache2" --cache-max $((sz * 10)) \
    >/dev/null 2>"$tmp/info_j.err"
sj=$("$BIN" cache list --cache-dir "$cache2" | grep "^live .*$tmp/j " | awk '{print $NF}')
check "--cache-max overrides FM_CACHE_MAX: info creates a store and evicts nothing under the larger cap" \
    bash -c "[ -n '$sj' ] && [ -f '$sj' ] && [ -f '$sh' ] && [ -f '$si' ]"

# A store a running flash-moe has open is in use (every open holds its lock).
cp -r "$fx" "$tmp/f"
"$BIN" serve "$tmp/f" --port 0 --capacity 2 --cache-dir "$cache" 2>"$tmp/serve.err" &
spid=$!
for _ in $(seq 1 100); do grep -q 'serving' "$tmp/serve.err" && break; sleep 0.1; done
sf=$("$BIN" cache list --cache-dir "$cache" | grep "$tmp/f " | awk '{print $1, $NF}')
check "a store open in a running server is listed as in use" bash -c "[[ '$sf' == live,in-use* ]]"
"$BIN" cache clean --cache-dir "$cache" --all >/dev/null
check "clean --all keeps the store a running server holds" test -f "${sf#* }"
kill -TERM $spid; wait $spid 2>/dev/null
"$BIN" cache clean --cache-dir "$cache" --all >/dev/null
check "clean --all removes it once the server has exited" test ! -e "${sf#* }"
