#!/usr/bin/env bash
# t_run.sh: the public header compiles as C++ and C99; `flash-moe run` and `flash-moe chat`
# (help with defaults, usage errors, streaming, determinism, --stats, multi-turn chat from
# a pipe with /stats and /reset) on the bundled demo model when it is present.
cd "${FM_ROOT:-.}" || exit 1
BIN=${FM_BIN:-build/flash-moe}
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check "flashmoe.h compiles as C++ (g++ -x c++ -Wall -Wextra -pedantic)" \
    g++ -fsyntax-only -x c++ -std=c++11 -Wall -Wextra -pedantic -Werror include/flashmoe.h
check "flashmoe.h compiles as C99 (-pedantic)" \
    gcc -fsyntax-only -x c -std=c99 -Wall -Wextra -pedantic -Werror include/flashmoe.h

"$BIN" run --help >"$tmp/help" 2>&1
check "run --help shows defaults" grep -qE -- '--temp V .*\(default 0.7\)' "$tmp/help"
check "run --help lists the model options" grep -q -- '--mem-limit' "$tmp/help"
"$BIN" chat --help >"$tmp/help" 2>&1
check "chat --help shows defaults and the chat commands" \
    bash -c "grep -qE -- '--max-tokens V .*\(default 1024\)' '$tmp/help' && grep -q '/reset' '$tmp/help'"
"$BIN" run tests/fixtures/qwen3_moe_f32 >/dev/null 2>"$tmp/err"
check "run without -p is a usage error (exit 2)" test $? -eq 2
"$BIN" run tests/fixtures/qwen3_moe_f32 -p hi --ctx 64 >/dev/null 2>"$tmp/err"
rc=$?
check "run on a model without tokenizer.json fails with a clear message" \
    bash -c "test $rc -eq 1 && grep -q 'tokenizer' '$tmp/err'"

if [ ! -d models/demo ] || [ ! -f models/demo/config.json ]; then
    ok "skipped: no demo model (run/chat generation)"
    exit 0
fi
"$BIN" run -p "Once upon a time" -n 24 --temp 0 >"$tmp/a" 2>"$tmp/a.err"
rc1=$?
"$BIN" run models/demo -p "Once upon a time" -n 24 --temp 0 >"$tmp/b" 2>/dev/null
check "run with no MODEL uses the demo model and says so" \
    bash -c "test $rc1 -eq 0 && grep -q 'bundled demo model' '$tmp/a.err'"
check "run streams text to stdout" test -s "$tmp/a"
check "greedy run is deterministic" cmp -s "$tmp/a" "$tmp/b"
"$BIN" run models/demo -p "Once upon a time" -n 16 --raw --stats >"$tmp/c" 2>"$tmp/c.err"
check "run --raw --stats succeeds" test $? -eq 0
for key in "tokens: prompt" "TTFT" "decode" "hit rate" "RSS" "expert cache" "repetition @" "distinct word 4-grams"; do
    check "--stats prints '$key'" grep -q "$key" "$tmp/c.err"
done
"$BIN" run models/demo -p "Once upon a time" -n 30 --ignore-eos --rep-at 10,20 >/dev/null 2>"$tmp/r.err"
check "--rep-at 10,20 reports repetition at 10 and 20 tokens" \
    bash -c "grep -q 'repetition @ 10 tokens' '$tmp/r.err' && grep -q 'repetition @ 20 tokens' '$tmp/r.err'"
check "--stats go to stderr, not stdout" bash -c "! grep -q 'TTFT' '$tmp/c'"
printf 'Hello there\n/stats\nTell me more\n/reset\nAgain\n/quit\n' |
    "$BIN" chat models/demo -n 8 --temp 0 --stats >"$tmp/d" 2>"$tmp/d.err"
check "chat reads turns from a pipe and exits 0 on /quit" test $? -eq 0
check "chat /stats prints statistics" grep -q "context: .* tokens held" "$tmp/d.err"
check "chat /reset clears the conversation" grep -q "conversation cleared" "$tmp/d.err"
# --stats after each turn: "tokens: prompt N (M reused)"; /stats repeats turn 1's line
reused=$(grep -o 'tokens: prompt [0-9]* ([0-9]* reused)' "$tmp/d.err" | sed 's/.*(\([0-9]*\) reused)/\1/' | tr '\n' ' ')
set -- $reused
check "chat turns: none reused, then the conversation prefix reused, none after /reset ($reused)" \
    test "$#" -eq 4 -a "${1:-x}" = 0 -a "${3:-0}" -gt 0 -a "${4:-x}" = 0
printf 'one\ntwo\n' | "$BIN" chat models/demo -n 4 --temp 0 >/dev/null 2>&1
check "chat ends at end of input" test $? -eq 0
# Ctrl-C: once text streams, SIGINT stops generation; the statistics still print
"$BIN" run models/demo -p "Once upon a time" -n 0 --ignore-eos --stats >"$tmp/e" 2>"$tmp/e.err" &
pid=$!
for _ in $(seq 100); do [ -s "$tmp/e" ] && break; sleep 0.1; done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
check "SIGINT stops run cleanly with finish cancelled (exit $rc)" \
    bash -c "test $rc -eq 0 && grep -q 'finish cancelled' '$tmp/e.err'"
