#!/usr/bin/env bash
# t_genconfig.sh: `flash-moe run` and `chat` take their sampling defaults from the model's
# generation_config.json, explicit flags override them, --stats names each value's source,
# `flash-moe info` shows them with their source, and a malformed file stops the command
# with a message naming the file or the field.
cd "${FM_ROOT:-.}" || exit 1
BIN=${FM_BIN:-build/flash-moe}
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
src=${FM_ROOT:-.}/models/demo
if [ ! -f "$src/config.json" ]; then ok "skipped: no demo model"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
m=$tmp/model
mkdir "$m"
for f in "$src"/*; do
    [ "$(basename "$f")" = generation_config.json ] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$m/"
done
gen() { printf '%s' "$1" >"$m/generation_config.json"; }
run() { "$BIN" run "$m" --raw -p "Once upon a time" --ignore-eos --cache-dir "" "$@"; }

# A hot, unrestricted sampler and 3 new tokens, from the file.
gen '{"do_sample": true, "temperature": 5.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 3, "eos_token_id": [4095, 4093]}'
run --stats --seed 1 >"$tmp/a" 2>"$tmp/a.err"
check "run succeeds with the model's generation_config.json" test $? -eq 0
check "--stats names the file as the source of temperature, top_k and max_tokens" \
    grep -q 'temperature 5 (generation_config.json).*top_k 0 (generation_config.json).*max_tokens 3 (generation_config.json).*eos 4095,4093' "$tmp/a.err"
check "max_new_tokens from the file bounds generation (3 tokens)" grep -q 'generated 3,' "$tmp/a.err"
run -n 24 --seed 1 >"$tmp/s1" 2>/dev/null
run -n 24 --seed 2 >"$tmp/s2" 2>/dev/null
check "do_sample + temperature 5 from the file: seeds 1 and 2 sample different text" \
    bash -c "[ -s '$tmp/s1' ] && ! cmp -s '$tmp/s1' '$tmp/s2'"

# Explicit flags override the file.
run --stats -n 5 --temp 0 >"$tmp/b" 2>"$tmp/b.err"
check "--stats names the flags as the source of temperature and max_tokens" \
    grep -q 'temperature 0 (flag).*max_tokens 5 (flag)' "$tmp/b.err"
check "-n 5 overrides max_new_tokens 3" grep -q 'generated 5,' "$tmp/b.err"
run -n 24 --temp 0 --seed 1 >"$tmp/g1" 2>/dev/null
run -n 24 --temp 0 --seed 2 >"$tmp/g2" 2>/dev/null
check "--temp 0 overrides the file's temperature: greedy, the same text for seeds 1 and 2" \
    bash -c "[ -s '$tmp/g1' ] && cmp -s '$tmp/g1' '$tmp/g2'"
echo "Hello" | "$BIN" chat "$m" --stats --temp 0.25 --cache-dir "" >/dev/null 2>"$tmp/c.err"
check "chat: a flag overrides the file, the file fills the rest" \
    grep -q 'temperature 0.25 (flag).*max_tokens 3 (generation_config.json)' "$tmp/c.err"

# Without do_sample transformers decodes greedily; the file still sets the other fields.
gen '{"temperature": 0.9, "repetition_penalty": 1.1}'
run --stats -n 2 >/dev/null 2>"$tmp/d.err"
check "no do_sample in the file: greedy (temperature 0 from the file)" \
    grep -q 'temperature 0 (generation_config.json, no do_sample).*repeat_penalty 1.1 (generation_config.json)' "$tmp/d.err"

# Errors name the file or the field.
gen '{"do_sample": true, "temperature": 0.7'
run -n 2 >/dev/null 2>"$tmp/e.err"
rc=$?
check "malformed generation_config.json: run exits 1 naming the file" \
    bash -c "[ $rc -eq 1 ] && grep -q 'model/generation_config.json: not valid JSON' '$tmp/e.err'"
gen '{"do_sample": true, "top_k": "20"}'
"$BIN" chat "$m" --cache-dir "" </dev/null >/dev/null 2>"$tmp/f.err"
rc=$?
check "wrong type: chat exits 1 naming the field" \
    bash -c "[ $rc -eq 1 ] && grep -q 'generation_config.json: field top_k: expected an integer' '$tmp/f.err'"

# `flash-moe info` shows the generation defaults with each value's source.
info() { "$BIN" info "$m" --cache-dir "" "$@" 2>/dev/null; }
gen '{"do_sample": true, "temperature": 5.0, "top_k": 0, "max_new_tokens": 3, "eos_token_id": [4095, 4093]}'
info >"$tmp/i1"
check "info: the file's values with their source (do_sample: transformers' top_p 1), library defaults for the rest" \
    grep -q '^generation .*temperature 5 (generation_config.json), top_p 1 (generation_config.json), top_k 0 (generation_config.json), min_p 0 (default).*max_tokens 3 (generation_config.json), eos 4095,4093 (generation_config.json)' "$tmp/i1"
info --config-only >"$tmp/i2"
check "info --config-only: the same generation line" \
    bash -c "grep '^generation ' '$tmp/i1' >'$tmp/i1g' && grep '^generation ' '$tmp/i2' | cmp -s - '$tmp/i1g'"
gen '{"temperature": 0.9, "top_p": 0.5}'
info >"$tmp/i3"
check "info: no do_sample in the file: greedy, top_p from the file" \
    grep -q '^generation .*temperature 0 (generation_config.json, no do_sample), top_p 0.5 (generation_config.json)' "$tmp/i3"
rm "$m/generation_config.json"
info >"$tmp/i4"
check "info: no file: says so, and shows the library defaults" \
    grep -q '^generation .*no generation_config.json; library defaults: temperature 0 (default)' "$tmp/i4"
gen '{"do_sample": true, "top_p": 2}'
"$BIN" info "$m" --cache-dir "" >"$tmp/i5" 2>"$tmp/i5.err"
rc=$?
check "info: a malformed file: the rest is printed, exit 1 naming the field" \
    bash -c "[ $rc -eq 1 ] && grep -q '^plan ' '$tmp/i5' && grep -q 'generation_config.json: field top_p' '$tmp/i5.err'"
