#!/usr/bin/python3
"""Check that scripts/demo/bpe.py encodes exactly as @lenml/tokenizers does with the written
models/demo/tokenizer.json (validation files, chat samples, odd Unicode and whitespace).

  /usr/bin/python3 scripts/demo/check_tokenizer.py [--model models/demo] [--data tmp/demo-data]
"""
import argparse
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Tokenizer  # noqa: E402

EXTRA = [" ", "\n\n\n", "\t\tx = 1\r\n", "naïve café ÅΩ 東京 🙂 ١٢٣", "x²+y³ = z½", "  leading spaces",
         "trailing   ", "it's you'll we'D I'M", "a\u0301 (decomposed)", "<|endoftext|><|im_end|>text<|im_start|>",
         "<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--data", default="tmp/demo-data")
    a = ap.parse_args()
    rng = random.Random(5)
    texts = list(EXTRA)
    with open(os.path.join(a.data, "val.jsonl")) as f:
        for line in f:
            t = json.loads(line)["text"]
            s = rng.randrange(0, max(1, len(t) - 3000))
            texts.append(t[s:s + 3000])
    with open(os.path.join(a.data, "chat_val.jsonl")) as f:
        texts += [json.loads(line)["text"] for line in f][:10]
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(["node", os.path.join(here, "encode.mjs"), a.model], input=json.dumps(texts),
                       capture_output=True, text=True, check=True)
    ref = json.loads(r.stdout)
    tok = Tokenizer.load(os.path.join(a.model, "tokenizer.json"))
    bad = 0
    for t, rr in zip(texts, ref):
        ids = tok.encode(t)
        if ids != rr["ids"]:
            bad += 1
            print("MISMATCH", repr(t[:80]), ids[:20], rr["ids"][:20])
        if tok.decode(ids) != rr["decoded"]:
            bad += 1
            print("DECODE MISMATCH", repr(t[:80]))
    print("%d texts, %d mismatches" % (len(texts), bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
