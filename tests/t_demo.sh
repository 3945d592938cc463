#!/usr/bin/env bash
# The bundled demo model against its stored references (models/demo/ref/, computed outside
# flash-moe by the installed transformers on the GPU machine, scripts/demo/reference_hf.py:
# float32 logits and greedy ids of Qwen2MoeForCausalLM on the stored weights dequantized,
# prompt ids from apply_chat_template + AutoTokenizer; provenance in each file's "source"):
#   - logits of a fixed prompt within 1e-4 relative error, same argmax, prefill and decode;
#   - the chat prompt tokenizes to the reference ids;
#   - the greedy chat answer equals the reference text at full and at 25% capacity;
#   - logits at 25% capacity are bitwise equal to full capacity;
#   - the tokenizer gives the ids of transformers' AutoTokenizer for ref/tokenizer.json's texts.
set -u
BIN=${FM_BIN:-build/flash-moe}
ROOT=${FM_ROOT:-.}
DEMO=$ROOT/models/demo
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }

if [ ! -f "$DEMO/config.json" ]; then nok "demo model present at $DEMO"; exit 1; fi
toks=$($PY -c "import json;print(','.join(map(str,json.load(open('$DEMO/ref/ref.json'))['tokens'])))")
E=$($PY -c "import json;print(json.load(open('$DEMO/config.json'))['num_experts'])")
Q=$((E / 4))

compare() { # ours ref -> prints "relerr argmax_equal"
    $PY - "$1" "$2" "$DEMO/ref/ref.json" <<'PYEOF'
import json, math, struct, sys
V = json.load(open(sys.argv[3]))["n_vocab"]
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
if len(a) != len(b):
    print("inf 0"); sys.exit()
n = len(a) // 4
x = struct.unpack("<%df" % n, a); y = struct.unpack("<%df" % n, b)
num = sum((p - q) ** 2 for p, q in zip(x, y)); den = sum(q * q for q in y)
am = all(max(range(V), key=lambda j: x[r * V + j]) == max(range(V), key=lambda j: y[r * V + j])
         for r in range(n // V))
print("%.3g %d" % (math.sqrt(num / den), am))
PYEOF
}

for mode in prefill decode; do
    flag=""; [ $mode = decode ] && flag=--decode
    if "$BIN" eval "$DEMO" --tokens "$toks" --logits-out "$tmp/$mode.f32" $flag --cache-dir "" 2>"$tmp/err"; then
        read -r err am <<<"$(compare "$tmp/$mode.f32" "$DEMO/ref/logits.f32")"
        if $PY -c "import sys; sys.exit(0 if float('$err') <= 1e-4 and $am == 1 else 1)"; then
            ok "demo logits ($mode) rel err $err <= 1e-4, argmax equal"
        else nok "demo logits ($mode) rel err $err, argmax equal=$am"; fi
    else nok "demo eval ($mode): $(cat "$tmp/err")"; fi
done
"$BIN" eval "$DEMO" --tokens "$toks" --logits-out "$tmp/capq.f32" --capacity $Q --cache-dir "" 2>/dev/null
if cmp -s "$tmp/capq.f32" "$tmp/prefill.f32"; then ok "demo logits at capacity $Q of $E bitwise equal to full"
else nok "demo logits at capacity $Q of $E differ from full capacity"; fi

$PY -c "import json;open('$tmp/prompt.txt','w').write(json.load(open('$DEMO/ref/greedy.json'))['prompt_text'])"
$PY -c "import json;print(json.dumps(json.load(open('$DEMO/ref/greedy.json'))['prompt_ids']))" >"$tmp/want_ids"
"$BIN" tokenize "$DEMO" --text-file "$tmp/prompt.txt" >"$tmp/got_ids" 2>&1
if $PY -c "import json,sys; sys.exit(0 if json.load(open('$tmp/got_ids'))==json.load(open('$tmp/want_ids')) else 1)" 2>/dev/null; then
    ok "demo chat prompt tokenizes to the reference ids"
else nok "demo chat prompt ids differ: $(head -c 300 "$tmp/got_ids")"; fi

# The reference text ends with <|im_end|>, where generation stops (EOS); run prints the text
# before it, then a newline.
$PY -c "import json;t=json.load(open('$DEMO/ref/greedy.json'))['text'];open('$tmp/want.txt','w').write(t.replace('<|im_end|>','')+'\\n')"
n=$($PY -c "import json;print(len(json.load(open('$DEMO/ref/greedy.json'))['ids']))")
prompt=$(cat "$tmp/prompt.txt"; printf x); prompt=${prompt%x}   # keep the trailing newline
for cap in $E $Q; do
    "$BIN" run "$DEMO" --raw -p "$prompt" --temp 0 -n "$n" --capacity $cap --cache-dir "" \
        >"$tmp/got$cap.txt" 2>"$tmp/err$cap"
    if cmp -s "$tmp/got$cap.txt" "$tmp/want.txt"; then ok "demo greedy answer equals the reference at capacity $cap"
    else nok "demo greedy answer at capacity $cap: got '$(head -c 200 "$tmp/got$cap.txt")'"; fi
done

if [ -f "$DEMO/ref/tokenizer.json" ]; then
    n=$($PY -c "import json;print(len(json.load(open('$DEMO/ref/tokenizer.json'))['cases']))")
    bad=0
    for ((i = 0; i < n; i++)); do
        $PY -c "import json,sys;c=json.load(open('$DEMO/ref/tokenizer.json'))['cases'][$i];open('$tmp/t.txt','w',encoding='utf-8',newline='').write(c['text']);print(json.dumps(c['ids']))" >"$tmp/want_t"
        "$BIN" tokenize "$DEMO" --text-file "$tmp/t.txt" >"$tmp/got_t" 2>&1
        $PY -c "import json,sys; sys.exit(0 if json.load(open('$tmp/got_t'))==json.load(open('$tmp/want_t')) else 1)" 2>/dev/null || bad=$((bad + 1))
    done
    if [ "$bad" = 0 ]; then ok "demo tokenizer equals transformers' AutoTokenizer on $n texts"
    else nok "demo tokenizer differs from transformers' AutoTokenizer on $bad of $n texts"; fi
fi
