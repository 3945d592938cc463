#!/usr/bin/env bash
# Bad-input tests: each malformed checkpoint must make `flash-moe eval` / `info` exit
# non-zero with a message naming the file and the tensor or field, and without a
# sanitizer report. The bad files are generated here from a small valid fixture.
set -u
ROOT=${FM_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=${FM_BIN:-$ROOT/build/flash-moe}
PY=/usr/bin/python3
SRC=$ROOT/tests/fixtures/qwen3_moe_f32
SHARDED=$ROOT/tests/fixtures/qwen3_moe_sharded
W=$(mktemp -d /tmp/fm_badinput.XXXXXX)
trap 'rm -rf "$W"' EXIT

# Rewrites the header of safetensors file $1 with the Python expression $2 applied to h
# (the header dict); extra bytes: $3 = "truncate:N" keeps only N bytes of the file,
# "hlen:N" writes N as the header length.
edit_st() {
    "$PY" - "$@" <<'PYEOF'
import json, struct, sys
path, expr = sys.argv[1], sys.argv[2]
extra = sys.argv[3] if len(sys.argv) > 3 else ""
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
exec(expr)
hb = json.dumps(h).encode()
out = struct.pack("<Q", len(hb)) + hb + data
if extra.startswith("truncate:"):
    out = out[:int(extra[9:])]
if extra.startswith("hlen:"):
    out = struct.pack("<Q", int(extra[5:])) + out[8:]
open(path, "wb").write(out)
PYEOF
}

fresh() { rm -rf "$W/m"; cp -r "$SRC" "$W/m"; }

# expect NAME CMD PATTERN1 PATTERN2: CMD must fail; its stderr must match both patterns.
expect() {
    local name=$1 cmd=$2 p1=$3 p2=$4
    local out rc
    out=$(eval "$cmd" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 0 ]; then echo "not ok - $name: exit status 0"; return; fi
    if echo "$out" | grep -qE 'Sanitizer|runtime error'; then echo "not ok - $name: sanitizer report"; echo "$out" | head -20 | sed 's/^/# /'; return; fi
    if [ $rc -ge 128 ]; then echo "not ok - $name: killed by a signal ($rc)"; return; fi
    if echo "$out" | grep -qF -- "$p1" && echo "$out" | grep -qF -- "$p2"; then
        echo "ok - $name (exit $rc: $(echo "$out" | tail -1 | cut -c1-200))"
    else
        echo "not ok - $name: message lacks '$p1' / '$p2': $out"
    fi
}

EVAL="'$BIN' eval '$W/m' --tokens 1,2,3 --logits-out '$W/out.f32'"
INFO="'$BIN' info '$W/m'"
ST=$W/m/model.safetensors
T=model.layers.0.mlp.experts.3.up_proj.weight

# sanity: the untouched copy runs
fresh
if eval "$EVAL" 2>/dev/null; then echo "ok - valid copy evaluates"; else echo "not ok - valid copy evaluates"; fi

fresh; size=$(stat -c %s "$ST"); edit_st "$ST" "pass" "truncate:$((size / 2))"
expect "truncated safetensors" "$EVAL" "model.safetensors" "out of range"

fresh; edit_st "$ST" "pass" "hlen:99999999"
expect "header length past the file" "$INFO" "model.safetensors" "header length"

fresh; edit_st "$ST" "h['$T']['data_offsets'] = h['model.layers.0.mlp.experts.2.up_proj.weight']['data_offsets']"
expect "overlapping offsets" "$EVAL" "model.safetensors" "overlap"

fresh; edit_st "$ST" "h['$T']['data_offsets'] = [10**12, 10**12 + h['$T']['data_offsets'][1] - h['$T']['data_offsets'][0]]"
expect "out-of-range offsets" "$EVAL" "$T" "out of range"

fresh; edit_st "$ST" "h['$T']['dtype'] = 'BF16'"
expect "dtype/shape vs byte count mismatch" "$EVAL" "model.safetensors: tensor $T" "BF16"

fresh; edit_st "$ST" "s = h['$T']['shape']; h['$T']['shape'] = [s[1], s[0]]"
expect "shape vs config mismatch" "$EVAL" "tensor $T" "expected"

fresh; edit_st "$ST" "del h['model.layers.0.self_attn.k_norm.weight']"
expect "missing tensor" "$EVAL" "model.safetensors" "model.layers.0.self_attn.k_norm.weight"

rm -rf "$W/m"; cp -r "$SHARDED" "$W/m"; rm -f "$W/m/model-00002-of-00002.safetensors"
expect "missing shard" "$EVAL" "model-00002-of-00002.safetensors" "tensor"

fresh; "$PY" -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['model_type']='llama_moe_x'; json.dump(c,open(p,'w'))" "$W/m/config.json"
expect "unknown model_type" "$EVAL" "config.json" "llama_moe_x"

for key in hidden_size num_experts_per_tok moe_intermediate_size; do
    fresh; "$PY" -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); del c[sys.argv[2]]; json.dump(c,open(p,'w'))" "$W/m/config.json" "$key"
    expect "config.json missing $key" "$INFO" "config.json" "$key"
done

fresh; echo '{"model_type": "qwen3_moe", ' > "$W/m/config.json"
expect "config.json not JSON" "$EVAL" "config.json" "JSON"

fresh
expect "token outside the vocabulary" "'$BIN' eval '$W/m' --tokens 1,999999 --logits-out '$W/out.f32'" "999999" "vocabulary"
