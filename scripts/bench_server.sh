#!/usr/bin/env bash
# bench_server.sh: what the HTTP server costs over direct generation. Runs the same chat
# prompt through `flash-moe run` (greedy, --ignore-eos, N tokens) and through
# `flash-moe serve` with a streaming /v1/chat/completions request (temperature 0,
# ignore_eos, max_tokens N), and prints tokens per second of both (N tokens over the whole
# generation, prefill included), the overhead, and time to first token: run's own TTFT,
# the API's TTFT on a cold prompt, and on a repeated prompt whose prefix is reused.
#   scripts/bench_server.sh [MODEL] [-n TOKENS] [-r REPEATS]     (MODEL: default the demo)
# Env: FM_BIN (default build/flash-moe), THREADS (compute threads, default all cores).
set -eu
cd "$(dirname "$0")/.."
BIN=${FM_BIN:-build/flash-moe}
MODEL=() N=128 R=3
while [ $# -gt 0 ]; do
    case $1 in
    -n) N=$2; shift 2;;
    -r) R=$2; shift 2;;
    -h|--help) sed -n '2,10p' "$0"; exit 0;;
    *) MODEL=("$1"); shift;;
    esac
done
TOPT=(); [ -n "${THREADS:-}" ] && TOPT=(--threads "$THREADS")
PROMPT="Write a short story about a robot who learns to paint, in about two hundred words."

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

echo "flash-moe server benchmark: $N tokens, $R repeats, model ${MODEL[*]:-(demo)}, $(nproc) cores"
echo "machine load: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- direct generation ----
dec=() ttft=()
for _ in $(seq 1 "$R"); do
    st=$("$BIN" run "${MODEL[@]}" "${TOPT[@]}" -p "$PROMPT" -n "$N" --temp 0 --ignore-eos --stats 2>&1 >/dev/null)
    dec+=("$(grep -o 'decode [0-9.]* tok/s' <<<"$st" | grep -o '[0-9.]*')")
    ttft+=("$(grep -o 'TTFT [0-9.]* ms' <<<"$st" | grep -o '[0-9.]*')")
done
run_dec=$(printf '%s\n' "${dec[@]}" | median)
run_ttft=$(printf '%s\n' "${ttft[@]}" | median)

# ---- through the API ----
log=$(mktemp)
"$BIN" serve "${MODEL[@]}" "${TOPT[@]}" --port 0 --max-tokens "$N" --stats 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
port=
for _ in $(seq 1 300); do
    port=$(grep -o 'on http://127\.0\.0\.1:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { cat "$log"; exit 1; }

api=$(PORT=$port N=$N R=$R PROMPT=$PROMPT node --input-type=module -e '
const url = `http://127.0.0.1:${process.env.PORT}/v1/chat/completions`;
const N = Number(process.env.N), R = Number(process.env.R);
async function once(prompt) {
  const t0 = performance.now();
  const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: prompt }], max_tokens: N,
      temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }) });
  const rd = r.body.getReader(), dec = new TextDecoder();
  let first = 0, last = 0, buf = "", usage = null;
  for (;;) {
    const { value, done } = await rd.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!ev.startsWith("data: {")) continue;
      const j = JSON.parse(ev.slice(6));
      if (j.usage) usage = j.usage;
      if (j.choices?.[0]?.delta?.content) { last = performance.now(); if (!first) first = last; }
    }
  }
  const n = usage.completion_tokens;
  return { ttft: first - t0, total: last - t0, n, cached: usage.prompt_tokens_details.cached_tokens };
}
const med = (a) => { a = [...a].sort((x, y) => x - y); return a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2; };
const cold = [], warm = [], decs = [], totals = [];
for (let k = 0; k < R; k++) {
  const c = await once(`(${k} ${Date.now()}) ` + process.env.PROMPT); // new prefix: nothing reused
  cold.push(c.ttft); decs.push(c.total); totals.push(c.total);
  const w = await once(process.env.PROMPT); // same prompt again: prefix reused
  if (k > 0) warm.push(w.ttft);
  decs.push(w.total - w.ttft + c.ttft); totals.push(w.total);
  if (c.n !== N) throw new Error(`generated ${c.n} tokens, not ${N}`);
}
console.log((N / (med(decs) / 1000)).toFixed(2), med(cold).toFixed(2), med(warm.length ? warm : cold).toFixed(2), totals.reduce((a, b) => a + b, 0).toFixed(3));
')
read -r api_tps api_cold api_warm api_total_ms <<<"$api"
kill -TERM $pid; wait $pid || true; trap - EXIT
# the library's own decode speed inside the server (its --stats lines)
srv_dec=$(grep -o 'decode [0-9.]* tok/s, expert' "$log" | grep -o '[0-9.]*' | median)
srv_ttft=$(grep -o 'TTFT [0-9.]* ms, prefill' "$log" | grep -o '[0-9.]*' | median)
# the library's time for the same requests: TTFT + (N-1)/decode each
lib_total_ms=$(grep -o 'TTFT [0-9.]* ms, prefill [0-9.]* tok/s, decode [0-9.]* tok/s' "$log" |
    awk -v n="$N" '{ t += $2 + (n - 1) / $8 * 1000 } END { printf "%.3f", t }')
rm -f "$log"

# direct: N tokens in TTFT + (N-1)/decode seconds, as the library measured them
run_tps=$(awk -v t="$run_ttft" -v d="$run_dec" -v n="$N" 'BEGIN { printf "%.2f", n / (t / 1000 + (n - 1) / d) }')
printf '\n%-40s %14s %14s %10s\n' "" "decode tok/s" "N tok / time" "TTFT ms"
printf '%-40s %14s %14s %10s\n' "flash-moe run (own process, in-library)" "$run_dec" "$run_tps" "$run_ttft"
printf '%-40s %14s %14s %10s\n' "serve: the library inside the server" "$srv_dec" "" "$srv_ttft"
printf '%-40s %14s %14s %10s\n' "serve: client view, cold prompt" "" "$api_tps" "$api_cold"
printf '%-40s %14s %14s %10s\n' "serve: client view, repeated prompt" "" "" "$api_warm"
awk -v a="$api_total_ms" -v l="$lib_total_ms" -v n="$N" -v r="$R" 'BEGIN {
    k = 2 * r * n
    printf "\nHTTP/JSON/SSE overhead: %.0f us per token (%.1f%% of the client-side time), over %d requests\n",
           (a - l) / k * 1000, (a - l) / a * 100, 2 * r }'
echo "(decode tok/s and TTFT of run and of the library inside the server are the library's own"
echo " figures; the client view is request sent to last content byte over loopback; cold = a new"
echo " prompt prefix, repeated = the same prompt again, its prefix reused from the KV cache. run"
echo " starts with a cold expert cache each time, the server keeps its cache across requests.)"
