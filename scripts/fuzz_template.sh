#!/usr/bin/env bash
# fuzz_template.sh: builds tests/fuzz_template.c with clang + libFuzzer (ASan, UBSan) and runs
# it on a corpus seeded with the template fixtures and the feature probes.
#   scripts/fuzz_template.sh [seconds=120] [extra libFuzzer args...]
# Findings (crash-*, leak-*, timeout-*) land in build-fuzz-template/; rerun one with
#   build-fuzz-template/fuzz_template FILE
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-120}
shift || true
OUT=build-fuzz-template
mkdir -p "$OUT/corpus"
clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iinclude -Isrc tests/fuzz_template.c src/template.c src/jinja_value.c src/common.c \
    -lcjson -lutf8proc -lm -lpthread -o "$OUT/fuzz_template"
for f in tests/fixtures/templates/*.jinja; do cp "$f" "$OUT/corpus/$(basename "$f")"; done
/usr/bin/python3 - "$OUT/corpus" <<'PY'
import json, sys, os
d = json.load(open("tests/fixtures/templates/cases/features.json"))
for i, c in enumerate(d["cases"]):
    with open(os.path.join(sys.argv[1], "feature_%02d" % i), "w") as f:
        f.write(c["source"] + "\n#CTX#\n" + json.dumps(c["context"]))
PY
cat > "$OUT/jinja.dict" <<'DICT'
"{{"
"}}"
"{%"
"%}"
"{%-"
"-%}"
"{#"
"#}"
" if "
" for "
" in "
" endfor "
" endif "
" else "
" elif "
" set "
" macro "
" endmacro "
" call "
" endcall "
" raw "
" endraw "
" namespace("
" loop."
"|tojson"
"|length"
" is defined"
" not "
" and "
" or "
"[::-1]"
"caller()"
"messages"
"|selectattr("
"|map(attribute="
"|join("
"|items"
"|default("
"|trim"
"|unique"
"|sort"
"|reverse"
"|string"
"|safe"
"|e"
"|format("
" is mapping"
" is string"
" is none"
".split("
".strip("
".startswith("
".items()"
"loop.previtem"
"{% break %}"
"{% continue %}"
"{% generation %}"
"{% filter upper %}"
"raise_exception("
"%s"
"**"
"//"
DICT
cd "$OUT"
./fuzz_template -max_total_time="$SECS" -dict=jinja.dict -max_len=4096 -rss_limit_mb=2048 -timeout=10 "$@" corpus
