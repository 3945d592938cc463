#!/usr/bin/env python3
"""The demo model's references and evaluation, computed by transformers (GPU machine).

  python3 scripts/demo/reference_hf.py --model MODEL_DIR [--hf HF_DIR] --data DATA_DIR [--samples 20]

MODEL_DIR is the stored demo model (MLX quantized, to_mlx.py), HF_DIR the save_pretrained
checkpoint it was converted from (train_hf.py; without --hf the class is built from
MODEL_DIR/config.json), DATA_DIR the corpus (make_corpus.py,
chat_data.py). transformers' Qwen2MoeForCausalLM is loaded from HF_DIR and then given exactly
the stored weights (MLX affine weights dequantized in float32 by scripts/ref/mlx_quant.py,
renamed as scripts/ref/hf_exec.py does); the tokenizer is transformers' AutoTokenizer on
MODEL_DIR's tokenizer.json / tokenizer_config.json, the chat prompt its apply_chat_template
(Jinja2). Writes MODEL_DIR/ref/:
  ref.json + logits.f32   a fixed code prompt: float32 prefill logits on the CPU (eager
                          attention), same format as tests/fixtures/*
  greedy.json             the chat prompt's ids and transformers' generate(do_sample=False)
                          continuation on the CPU in float32 (ids, text, smallest margin)
  tokenizer.json          HF tokenizer ids of a set of texts (code, chat, unicode)
  eval.json               validation losses of the stored weights, 20 completions of function
                          signatures sampled at temperature 0.7 with the share that compile(),
                          and routing statistics (experts needed for 50/90/99% hit rates)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, Qwen2MoeConfig, Qwen2MoeForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
sys.dont_write_bytecode = True
import hf_exec  # noqa: E402  (weight loading helpers only; --installed path, no stand-ins)

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
TOKENIZER_TEXTS = [
    "Hello, world!", "  leading spaces\tand tabs\n\n\nnewlines", "x = [1, 2, 3]  # 12345 digits 3.14159",
    "def f(a, b):\n    return a ** b // 7\n", "naïve café — 日本語 テキスト 🙂 emoji", "CamelCaseNames and snake_case_names",
    "<|im_start|>user\nhi<|im_end|>\n", "don't won't I'm they'll we've", "\r\n\r\nWindows line endings\r\n",
]


def function_body(prompt, completion):
    """The prompt plus the completion up to the end of the function: stop at the first
    non-indented line after the body; drop a last, unfinished line."""
    text = prompt + completion
    lines = text.split("\n")
    n_prompt = prompt.count("\n")
    keep = []
    for i, line in enumerate(lines):
        if i > n_prompt and line and not line[0].isspace():
            break
        keep.append(line)
    if not text.endswith("\n") and len(keep) == len(lines):
        keep = keep[:-1]
    return "\n".join(keep).rstrip() + "\n"


def load_stored(model_dir, hf_dir, dev):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if hf_dir:
        model = Qwen2MoeForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    else:  # the class built from the stored config.json (quantization keys left out)
        c = {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")}
        config = Qwen2MoeConfig(**c)
        config._attn_implementation = "eager"
        model = Qwen2MoeForCausalLM(config).float()
    t = hf_exec.to_model_keys(hf_exec.fixture_tensors(model_dir, cfg), model, "qwen2_moe")
    missing, unexpected = model.load_state_dict(t, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval().to(dev)


@torch.no_grad()
def loss_of(model, ids, seq, max_tokens, dev):
    tot, n = 0.0, 0
    s = ids[:max_tokens + 1]
    for st in range(0, len(s) - seq - 1, seq * 32):
        xs = [s[i:i + seq + 1] for i in range(st, min(st + seq * 32, len(s) - seq - 1), seq)]
        x = torch.from_numpy(np.stack(xs).astype(np.int64)).to(dev)
        lg = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        tot += float(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
        n += x[:, 1:].numel()
    return tot / max(n, 1), n


@torch.no_grad()
def routing(model, ids, n_tokens, seq, dev):
    top_k, counts = model.config.num_experts_per_tok, None
    for st in range(0, n_tokens, seq):
        x = torch.from_numpy(ids[st:st + seq].astype(np.int64))[None].to(dev)
        rl = model(input_ids=x, output_router_logits=True, use_cache=False).router_logits
        if counts is None:
            counts = [np.zeros(r.shape[-1], dtype=np.int64) for r in rl]
        for li, r in enumerate(rl):
            sel = torch.topk(torch.softmax(r.float(), -1), top_k, dim=-1).indices.reshape(-1).cpu().numpy()
            counts[li] += np.bincount(sel, minlength=r.shape[-1])
    out = []
    for c in counts:
        share = np.sort(c)[::-1] / c.sum()
        cum = np.cumsum(share)
        out.append({"counts": c.tolist(),
                    "experts_for_hit_rate": {str(h): int(np.searchsorted(cum, h / 100.0) + 1) for h in (50, 90, 99)},
                    "top4_share": round(float(cum[3]), 4), "universal_experts": int((share >= 2.0 / len(c)).sum())})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--hf", help="the save_pretrained checkpoint (default: build the class from config.json)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--train-json")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(os.path.join(a.model, "ref"), exist_ok=True)
    tok = AutoTokenizer.from_pretrained(a.model)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    prov = "transformers %s Qwen2MoeForCausalLM, PyTorch %s, float32" % (transformers.__version__, torch.__version__)
    cpu = load_stored(a.model, a.hf, "cpu")
    # 1. fixed prompt logits
    lp = tok(LOGITS_PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lg = cpu(input_ids=torch.tensor([lp]), use_cache=False).logits[0].float()
    lg.numpy().astype("<f4").tofile(os.path.join(a.model, "ref", "logits.f32"))
    top2 = lg.topk(2, dim=-1).values
    with open(os.path.join(a.model, "ref", "ref.json"), "w") as f:
        json.dump({"tokens": lp, "n_vocab": cpu.config.vocab_size, "arch": "qwen2_moe", "dtype": "MLX q4 g64",
                   "text": LOGITS_PROMPT, "argmax": lg.argmax(-1).tolist(),
                   "min_argmax_margin": round(float((top2[:, 0] - top2[:, 1]).min()), 6),
                   "source": prov + ", eager attention, CPU, prefill, on the stored weights dequantized; "
                             "ids from transformers' AutoTokenizer (tokenizers %s)" % __import__("tokenizers").__version__},
                  f, indent=1)
        f.write("\n")
    # 2. greedy chat answer with generate()
    msgs = [{"role": "user", "content": CHAT_PROMPT}]
    ptext = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    pids = tok(ptext, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        g = cpu.generate(torch.tensor([pids]), do_sample=False, max_new_tokens=128, eos_token_id=[im_end, eot],
                         pad_token_id=eot, output_scores=True, return_dict_in_generate=True)
    cont = g.sequences[0, len(pids):].tolist()
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in g.scores]
    greedy = {"prompt_text": ptext, "prompt_ids": pids, "ids": cont, "text": tok.decode(cont, skip_special_tokens=False),
              "stop_ids": [im_end, eot], "max_new_tokens": 128, "min_top2_margin": round(min(margins), 6),
              "source": prov + ", CPU, generate(do_sample=False) on the stored weights dequantized; prompt from "
                        "apply_chat_template (Jinja2) and AutoTokenizer"}
    with open(os.path.join(a.model, "ref", "greedy.json"), "w") as f:
        json.dump(greedy, f, indent=1)
        f.write("\n")
    print("greedy:", repr(greedy["text"]), "min margin %.4f" % min(margins), flush=True)
    # 3. tokenizer ids of a few texts (plus the start of some validation files)
    texts = list(TOKENIZER_TEXTS) + [LOGITS_PROMPT, ptext] + SIGNATURES[:4]
    with open(os.path.join(a.data, "val.jsonl")) as f:
        for i, line in enumerate(f):
            if i >= 12:
                break
            texts.append(json.loads(line)["text"][:1500])
    with open(os.path.join(a.model, "ref", "tokenizer.json"), "w") as f:
        json.dump({"source": "transformers %s AutoTokenizer (tokenizers %s) on this model's tokenizer.json, "
                             "add_special_tokens=False" % (transformers.__version__, __import__("tokenizers").__version__),
                   "cases": [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in texts]},
                  f, indent=0, ensure_ascii=False)
        f.write("\n")
    del cpu
    # 4. evaluation on the GPU (float32, no TF32) on the stored weights
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = load_stored(a.model, a.hf, dev)
    m.config._attn_implementation = "sdpa"
    val = np.load(os.path.join(a.data, "val_ids.npy"))
    cval = np.load(os.path.join(a.data, "chat_val_ids.npy"))
    ev = {"source": prov + ", %s, on the stored weights dequantized" % dev}
    ev["val_loss"], ev["val_tokens"] = loss_of(m, val, 512, 1 << 20, dev)
    ev["chat_val_loss"], ev["chat_val_tokens"] = loss_of(m, cval, 512, 1 << 20, dev)
    if a.train_json and os.path.exists(a.train_json):
        tj = json.load(open(a.train_json))
        ev["before_quantization"] = {"val_loss_bf16_autocast": tj.get("val_loss_bf16_autocast"),
                                     "chat_val_loss_bf16_autocast": tj.get("chat_val_loss_bf16_autocast")}
    print("val loss %.4f (%d tokens), chat val loss %.4f" % (ev["val_loss"], ev["val_tokens"], ev["chat_val_loss"]), flush=True)
    torch.manual_seed(0)
    samples, ok = [], 0
    for i in range(a.samples):
        p = SIGNATURES[i % len(SIGNATURES)]
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = m.generate(torch.tensor([ids], device=dev), do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                             max_new_tokens=128, eos_token_id=[eot], pad_token_id=eot)
        comp = tok.decode([t for t in out[0, len(ids):].tolist() if t != eot], skip_special_tokens=False)
        body = function_body(p, comp)
        try:
            compile(body, "<sample>", "exec")
            good = True
        except SyntaxError:
            good = False
        ok += good
        samples.append({"prompt": p, "completion": comp, "checked": body, "compiles": good})
    ev["sampling"] = "generate(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=128), torch seed 0"
    ev["compile_rate"] = ok / max(1, a.samples)
    ev["samples"] = samples
    print("compile rate %.2f" % ev["compile_rate"], flush=True)
    ev["routing"] = routing(m, val, 16384, 512, dev)
    ev["routing_tokens"] = 16384
    with open(os.path.join(a.model, "ref", "eval.json"), "w") as f:
        json.dump(ev, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
