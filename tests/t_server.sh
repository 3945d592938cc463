#!/usr/bin/env bash
# t_server.sh: `flash-moe serve` command line and binding: --help, bad option values,
# a missing model directory, loopback-only binding by default, and the request's `model`
# field never naming a file. Model: $FM_SERVE_MODEL, else the bundled demo model.
set -u
BIN=${FM_BIN:-build/flash-moe}
MODEL=(${FM_SERVE_MODEL:+"$FM_SERVE_MODEL"})
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
bad() { n=$((n + 1)); echo "not ok $n - $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

out=$("$BIN" serve --help 2>&1); rc=$?
check "serve --help exits 0" "[ $rc -eq 0 ]"
check "--help lists the options with defaults" \
    "grep -q -- '--api-key' <<<\"\$out\" && grep -q -- '--queue V.*(default 16)' <<<\"\$out\" && grep -q -- '--host V.*127.0.0.1' <<<\"\$out\""
check "--help marks --force-completion as testing only" "grep -q -- '--force-completion.*TESTING ONLY' <<<\"\$out\""

for args in "--port 70000" "--queue -1" "--max-tokens 0" "--max-body 0" "--api-key=" "--no-such-option"; do
    "$BIN" serve "${MODEL[@]}" $args >/dev/null 2>&1; rc=$?
    check "serve $args is a usage error (exit 2)" "[ $rc -eq 2 ]"
done
err=$("$BIN" serve /nonexistent/model/dir --port 0 2>&1); rc=$?
check "a missing model directory fails with a message (exit 1)" "[ $rc -eq 1 ] && grep -q 'nonexistent' <<<\"\$err\""

# default binding is loopback only
log=$(mktemp)
"$BIN" serve "${MODEL[@]}" --port 0 2>"$log" &
pid=$!
port=
for _ in $(seq 1 200); do
    port=$(grep -o 'on http://127\.0\.0\.1:[0-9]*' "$log" | grep -o '[0-9]*$')
    [ -n "$port" ] && break
    sleep 0.1
done
check "serve listens on 127.0.0.1 by default" "[ -n \"$port\" ]"
if [ -n "$port" ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
    check "GET /health answers on loopback" "[ \"$code\" = 200 ]"
    ext=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -v '^127\.' | grep -v ':' | head -1)
    if [ -n "$ext" ]; then
        curl -s -m 2 -o /dev/null "http://$ext:$port/health"; rc=$?
        check "not reachable on the external address $ext (refused or timed out)" "[ $rc -eq 7 ] || [ $rc -eq 28 ]"
    fi
    id=$(curl -s "http://127.0.0.1:$port/v1/models" | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)
    for m in "/etc/passwd" "../../../../etc/shadow" "file:///etc/hosts"; do
        body=$(curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
            -d "{\"model\":\"$m\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}")
        got=$(grep -o '"model":"[^"]*"' <<<"$body" | cut -d'"' -f4)
        check "model \"$m\" is answered by the served model ($id), not opened" \
            "[ -n \"$id\" ] && [ \"$got\" = \"$id\" ] && ! grep -q 'root:' <<<\"\$body\""
    done
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    check "SIGTERM shuts the server down cleanly (exit 0)" "[ $rc -eq 0 ]"
else
    kill "$pid" 2>/dev/null
    cat "$log"
fi
rm -f "$log"

# sampling defaults come from the model's generation_config.json (as transformers reads it):
# with do_sample and a high temperature, two seeds differ; explicit temperature 0 agrees
src=${FM_SERVE_MODEL:-${FM_ROOT:-.}/models/demo}
if [ -f "$src/config.json" ]; then
    gdir=$(mktemp -d)
    for f in "$src"/*; do [ "$(basename "$f")" = generation_config.json ] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$gdir/"; done
    echo '{"do_sample": true, "temperature": 5.0, "top_k": 0, "top_p": 1.0}' >"$gdir/generation_config.json"
    log=$(mktemp)
    "$BIN" serve "$gdir" --port 0 2>"$log" &
    pid=$!
    port=
    for _ in $(seq 1 200); do
        port=$(grep -o 'on http://127\.0\.0\.1:[0-9]*' "$log" | grep -o '[0-9]*$')
        [ -n "$port" ] && break
        sleep 0.1
    done
    gen() { curl -s "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
        -d "{\"model\":\"m\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"ignore_eos\":true$1}" | grep -o '"text":"[^"]*"'; }
    check "startup reports the generation_config.json sampling defaults" "grep -q 'temperature 5' \"$log\""
    a=$(gen ',"seed":1'); b=$(gen ',"seed":2')
    check "do_sample from generation_config.json: seeds 1 and 2 sample different text" "[ -n \"\$a\" ] && [ \"\$a\" != \"\$b\" ]"
    a=$(gen ',"seed":1,"temperature":0'); b=$(gen ',"seed":2,"temperature":0')
    check "temperature 0 in the request overrides it: greedy, seed-independent" "[ -n \"\$a\" ] && [ \"\$a\" = \"\$b\" ]"
    kill -TERM "$pid"; wait "$pid"
    rm -rf "$gdir" "$log"
fi
