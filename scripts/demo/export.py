#!/usr/bin/python3
"""Export the trained demo model and its reference outputs.

  /usr/bin/python3 scripts/demo/export.py [--ckpt tmp/demo-train/final.pt]

Writes models/demo/{config.json, model.safetensors (BF16), generation_config.json} and
models/demo/ref/: every reference below is computed by scripts/ref/models.py in float32 on the
BF16 weights exactly as stored (reloaded from model.safetensors):
  ref.json + logits.f32   fixed code prompt, same format as tests/fixtures/* (prefill logits)
  greedy.json             ChatML prompt ids from @lenml/tokenizers (scripts/demo/encode.mjs)
                          and the greedy continuation (ids + text)
  eval.json               validation loss, chat validation loss, sampled completions and the
                          share that compile(), routing statistics
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts", "ref"))
sys.dont_write_bytecode = True
import jinja2  # noqa: E402
import models  # noqa: E402
import st_io  # noqa: E402
from bpe import Tokenizer  # noqa: E402
from train import DEMO_CONFIG, evaluate, token_stream  # noqa: E402

OUT = os.path.join(ROOT, "models", "demo")
CHAT_PROMPT = "Write a function that reverses a list."
LOGITS_PROMPT = "import os\n\n\ndef read_config(path):\n    \"\"\"Read a config file.\"\"\"\n    with open(path) as f:\n"
SIGNATURES = [
    "def is_even(n):\n", "def read_file(path):\n", "def count_words(text):\n", "def merge(a, b):\n",
    "def parse_args(argv):\n", "def flatten(items):\n", "def mean(values):\n", "def to_json(obj):\n",
    "def split_lines(text):\n", "def find_max(numbers):\n", "class Node:\n    def __init__(self, value):\n",
    "def normalize_path(path):\n", "def get_logger(name):\n", "def unique(items):\n", "def clamp(x, lo, hi):\n",
    "def main():\n", "def load_json(path):\n", "def is_valid_name(name):\n", "def chunks(seq, n):\n",
    "def format_bytes(n):\n",
]


def node_encode(texts):
    r = subprocess.run(["node", os.path.join(HERE, "encode.mjs"), OUT], input=json.dumps(texts),
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


@torch.no_grad()
def generate(model, ids, n_new, stop_ids, temperature=0.0, gen=None, bf16=False):
    ids = list(ids)
    out = []
    for _ in range(n_new):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(torch.tensor([ids]))[0, -1].float()
        if temperature == 0.0:
            nxt = int(torch.argmax(logits))
        else:
            p = torch.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(p, 1, generator=gen))
        out.append(nxt)
        ids.append(nxt)
        if nxt in stop_ids:
            break
    return out


def function_body(prompt, completion):
    """The prompt plus the completion up to the end of the function: stop at the first
    non-indented line after the body; drop a last, unfinished line."""
    text = prompt + completion
    lines = text.split("\n")
    keep = []
    n_prompt = prompt.count("\n")
    for i, line in enumerate(lines):
        if i >= n_prompt and line and not line[0].isspace() and i > n_prompt:
            break
        keep.append(line)
    if not text.endswith("\n") and len(keep) == len(lines):
        keep = keep[:-1]
    return "\n".join(keep).rstrip() + "\n"


@torch.no_grad()
def routing_stats(model, stream, n_tokens=8192, seq=256):
    """Per layer: expert selection counts over n_tokens validation tokens (float32 reference)."""
    counts = None
    for s in range(0, n_tokens, seq):
        x = torch.from_numpy(stream[s:s + seq].astype(np.int64))[None]
        _, routers = model(x, return_router_logits=True)
        if counts is None:
            counts = [np.zeros(r.shape[-1], dtype=np.int64) for r in routers]
        for li, r in enumerate(routers):
            sel = torch.topk(torch.softmax(r.float(), -1), model.cfg.top_k, dim=-1).indices
            counts[li] += np.bincount(sel.reshape(-1).numpy(), minlength=r.shape[-1])
    res = []
    for c in counts:
        share = np.sort(c)[::-1] / c.sum()
        cum = np.cumsum(share)
        need = {str(h): int(np.searchsorted(cum, h / 100.0) + 1) for h in (50, 90, 99)}
        res.append({"counts": c.tolist(), "experts_for_hit_rate": need,
                    "top4_share": round(float(cum[3]), 4),
                    "universal_experts": int((share >= 2.0 / len(c)).sum())})
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "tmp", "demo-train", "final.pt"))
    ap.add_argument("--data", default=os.path.join(ROOT, "tmp", "demo-data"))
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--val-tokens", type=int, default=32768)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    global OUT
    if a.out and os.path.abspath(a.out) != OUT:
        os.makedirs(a.out, exist_ok=True)
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(OUT, fn), "rb") as src, open(os.path.join(a.out, fn), "wb") as dst:
                dst.write(src.read())
        OUT = os.path.abspath(a.out)
    torch.set_num_threads(1)
    ck = torch.load(a.ckpt)
    sd = ck["model"]
    cfg = dict(DEMO_CONFIG)
    # 1. checkpoint files
    names = sorted(sd)
    stored = [(n, "BF16", tuple(sd[n].shape), st_io.tensor_bytes(sd[n], "BF16")) for n in names]
    st_io.write_safetensors(os.path.join(OUT, "model.safetensors"), stored)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 4093, "eos_token_id": [4095, 4093], "pad_token_id": 4093, "do_sample": True,
                   "temperature": 0.7, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
                   "transformers_version": "4.51.0"}, f, indent=2)
        f.write("\n")
    # 2. reload exactly what was stored, float32
    model = models.load_model_dir(OUT)
    tok = Tokenizer.load(os.path.join(OUT, "tokenizer.json"))
    eot, im_end = tok.special["<|endoftext|>"], tok.special["<|im_end|>"]
    val = token_stream(os.path.join(a.data, "val.jsonl"), tok, eot, os.path.join(a.data, "val_ids.npy"))
    chat_val = token_stream(os.path.join(a.data, "chat_val.jsonl"), tok, eot, os.path.join(a.data, "chat_val_ids.npy"))
    ev = {"step": ck["step"], "train_args": ck["args"]}
    ev["val_loss"] = round(evaluate(model, val, 256, max_tokens=a.val_tokens), 4)
    ev["val_tokens"] = min(a.val_tokens, len(val))
    ev["chat_val_loss"] = round(evaluate(model, chat_val, 256, max_tokens=len(chat_val)), 4)
    print("val loss %.4f  chat val loss %.4f" % (ev["val_loss"], ev["chat_val_loss"]), flush=True)
    # 3. fixed-prompt logits (fixture format)
    tmpl = jinja2.Environment().from_string(json.load(open(os.path.join(OUT, "tokenizer_config.json")))["chat_template"])
    chat_text = tmpl.render(messages=[{"role": "user", "content": CHAT_PROMPT}], add_generation_prompt=True)
    enc = node_encode([LOGITS_PROMPT, chat_text] + SIGNATURES)
    for e in enc:
        assert e["ids"] == tok.encode(e["text"]), e["text"]
    os.makedirs(os.path.join(OUT, "ref"), exist_ok=True)
    lp = enc[0]["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([lp]))[0].float()
    logits.numpy().astype("<f4").tofile(os.path.join(OUT, "ref", "logits.f32"))
    with open(os.path.join(OUT, "ref", "ref.json"), "w") as f:
        json.dump({"tokens": lp, "n_vocab": cfg["vocab_size"], "arch": "qwen2_moe", "dtype": "BF16",
                   "text": LOGITS_PROMPT, "argmax": logits.argmax(-1).tolist(),
                   "source": "scripts/ref/models.py float32 transcription of transformers "
                             "modeling_qwen2_moe.py on the stored BF16 weights; ids from @lenml/tokenizers"},
                  f, indent=1)
        f.write("\n")
    # 4. greedy chat answer
    pids = enc[1]["ids"]
    cont = generate(model, pids, 96, {im_end, eot})
    greedy = {"prompt_text": chat_text, "prompt_ids": pids, "ids": cont, "text": tok.decode(cont),
              "stop_ids": [im_end, eot], "max_new_tokens": 96,
              "source": "greedy argmax, scripts/ref/models.py float32 on the stored BF16 weights; "
                        "prompt rendered with Python Jinja2 from tokenizer_config.json, encoded by @lenml/tokenizers"}
    with open(os.path.join(OUT, "ref", "greedy.json"), "w") as f:
        json.dump(greedy, f, indent=1)
        f.write("\n")
    print("greedy:", repr(greedy["text"]), flush=True)
    # 5. sampled completions of function signatures (temperature 0.7), compile() check
    gen = torch.Generator().manual_seed(0)
    samples, ok = [], 0
    for i in range(a.samples):
        e = enc[2 + i % len(SIGNATURES)]
        c = generate(model, e["ids"], 64, {eot}, temperature=0.7, gen=gen, bf16=True)
        body = function_body(e["text"], tok.decode([t for t in c if t != eot]))
        try:
            compile(body, "<sample>", "exec")
            good = True
        except SyntaxError:
            good = False
        ok += good
        samples.append({"prompt": e["text"], "completion": tok.decode(c), "checked": body, "compiles": good})
    ev["samples"] = samples
    ev["compile_rate"] = ok / max(1, a.samples)
    print("compile rate %.2f" % ev["compile_rate"], flush=True)
    # 6. routing concentration
    ev["routing"] = routing_stats(model, val)
    with open(os.path.join(OUT, "ref", "eval.json"), "w") as f:
        json.dump(ev, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(OUT, x)) for x in os.listdir(OUT) if os.path.isfile(os.path.join(OUT, x)))
    print("models/demo files: %d bytes" % size)


if __name__ == "__main__":
    main()
