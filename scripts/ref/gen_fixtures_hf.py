#!/usr/bin/env python3
"""Reference fixtures written by transformers itself (GPU machine, where transformers 5 is installed).

  python3 scripts/ref/gen_fixtures_hf.py --out tests/fixtures [--std 0.08] [--seed 0]

For qwen3_moe, qwen2_moe, mixtral and olmoe: takes the dimensions of tests/fixtures/<arch>_f32/
config.json (tiny, with the features each architecture needs: qwen3_moe dense layers from
mlp_only_layers, qwen2_moe shared expert and q/k/v bias, olmoe q/k norm), builds the model
with transformers' own AutoModelForCausalLM.from_config, draws every weight from N(0, std)
(norm weights 1 + N(0, std)) with a seeded torch generator, and writes it with
save_pretrained twice: hf_<arch>_f32 (float32) and hf_<arch>_bf16 (bfloat16; qwen3_moe's is
sharded with an index). Each is reloaded with from_pretrained in float32 (eager attention,
CPU) and its logits for a seeded random token sequence are written as logits.f32
[n_tokens, vocab] with ref.json (tokens, n_vocab, arch, dtype, provenance, the decode-vs-
prefill error in transformers itself, and the smallest top-1/top-2 margin).
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

ARCHS = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe"]
N_TOKENS = 24
DROP = ("torch_dtype", "dtype", "transformers_version", "architectures", "model_type")


def init_weights(model, std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            r = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
            p.copy_(r + 1.0 if ("norm" in name and p.dim() == 1) else r)


@torch.no_grad()
def logits_of(model, tokens):
    pre = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].float()
    cache, rows = None, []
    for t in tokens:
        out = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0, -1].float())
    dec = torch.stack(rows)
    return pre, float(torch.linalg.norm((dec - pre).double()) / torch.linalg.norm(pre.double()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--src", default="tests/fixtures", help="where the <arch>_f32 configs are read")
    ap.add_argument("--std", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(4)
    for ai, arch in enumerate(ARCHS):
        cj = json.load(open(os.path.join(a.src, arch + "_f32", "config.json")))
        kw = {k: v for k, v in cj.items() if k not in DROP}
        config = AutoConfig.for_model(arch, **kw)
        config._attn_implementation = "eager"
        torch.manual_seed(a.seed + ai)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        init_weights(model, a.std, a.seed + ai)
        rng = np.random.default_rng(a.seed + 100 + ai)
        tokens = [int(x) for x in rng.integers(3, config.vocab_size, size=N_TOKENS)]
        for dt_name, dt in (("F32", torch.float32), ("BF16", torch.bfloat16)):
            d = os.path.join(a.out, "hf_%s_%s" % (arch, dt_name.lower()))
            shutil.rmtree(d, ignore_errors=True)
            kws = {"max_shard_size": "100KB"} if (arch == "qwen3_moe" and dt_name == "BF16") else {}
            model.to(dt).save_pretrained(d, safe_serialization=True, **kws)
            m2 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
            pre, e_dec = logits_of(m2, tokens)
            pre.numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
            top2 = pre.topk(2, dim=-1).values
            ref = {"tokens": tokens, "n_vocab": config.vocab_size, "arch": arch, "dtype": dt_name,
                   "argmax": pre.argmax(-1).tolist(),
                   "min_argmax_margin": round(float((top2[:, 0] - top2[:, 1]).min()), 6),
                   "source": "transformers %s %s, written by save_pretrained and reloaded with from_pretrained "
                             "(float32, eager attention, CPU), PyTorch %s; weights N(0, %g), norms 1 + N(0, %g), "
                             "seed %d: scripts/ref/gen_fixtures_hf.py"
                             % (transformers.__version__, type(m2).__name__, torch.__version__, a.std, a.std,
                                a.seed + ai),
                   "hf_reference": {"transformers": transformers.__version__, "torch": torch.__version__,
                                    "class": type(m2).__name__,
                                    "decode_vs_prefill_rel_err": float("%.3e" % e_dec)}}
            with open(os.path.join(d, "ref.json"), "w") as f:
                json.dump(ref, f, indent=1)
                f.write("\n")
            for fn in ("generation_config.json",):
                p = os.path.join(d, fn)
                if os.path.exists(p):
                    os.remove(p)
            files = sorted(os.listdir(d))
            print("%-22s decode-vs-prefill %.2e  margin %.4f  files %s" % (os.path.basename(d), e_dec,
                                                                            ref["min_argmax_margin"], files), flush=True)


if __name__ == "__main__":
    main()
