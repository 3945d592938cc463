#!/usr/bin/env python3
"""Convert a Hugging Face qwen2_moe/qwen3_moe checkpoint to the MLX quantized layout.

  python3 scripts/demo/to_mlx.py HF_DIR OUT_DIR [--bits 4] [--group 64] [--router-bits 8]

What `mlx_lm.convert --hf-path HF_DIR --mlx-path OUT_DIR -q --q-bits B --q-group-size G
--dtype bfloat16` writes for these models (ml-explore/mlx-lm mlx_lm/models/qwen2_moe.py
`sanitize`: per-expert mlp.experts.{e}.{gate,up,down}_proj stacked into
mlp.switch_mlp.{gate,up,down}_proj [E, out, in]; transformers 5's fused
mlp.experts.gate_up_proj [E, 2I, H] is split back into gate = rows 0..I-1, up = rows I..2I-1),
then every linear and embedding weight quantized with MLX's affine algorithm
(scripts/ref/mlx_quant.py, which cites MLX's own source) into weight (U32) / scales / biases
(BF16); norms and attention biases stay BF16. --router-bits keeps the routers (mlp.gate) and
the shared-expert gate (mlp.shared_expert_gate) at that many bits through per-module entries of
the config's "quantization" dict (as mlx_lm's quant_predicate does for MoE routers).
OUT_DIR gets model.safetensors, config.json (with "quantization" and "quantization_config"),
and the tokenizer/generation files copied from HF_DIR when present.
"""
import argparse
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
sys.dont_write_bytecode = True
import mlx_quant  # noqa: E402
import st_io  # noqa: E402


def mlx_layout(t, n_layers):
    """{hf name: f32 tensor} -> {mlx name: f32 tensor} (stacked switch_mlp experts)."""
    out = {}
    for k, v in t.items():
        if ".mlp.experts." not in k:
            out[k] = v
    for li in range(n_layers):
        pre = "model.layers.%d.mlp." % li
        if pre + "experts.gate_up_proj" in t:
            gu = t[pre + "experts.gate_up_proj"]
            inter = gu.shape[1] // 2
            out[pre + "switch_mlp.gate_proj.weight"] = gu[:, :inter].contiguous()
            out[pre + "switch_mlp.up_proj.weight"] = gu[:, inter:].contiguous()
            out[pre + "switch_mlp.down_proj.weight"] = t[pre + "experts.down_proj"].contiguous()
        elif pre + "experts.0.gate_proj.weight" in t:
            for p in ("gate_proj", "up_proj", "down_proj"):
                n = 0
                while "%sexperts.%d.%s.weight" % (pre, n, p) in t:
                    n += 1
                out["%sswitch_mlp.%s.weight" % (pre, p)] = torch.stack(
                    [t["%sexperts.%d.%s.weight" % (pre, e, p)] for e in range(n)])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--router-bits", type=int, default=8)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.hf_dir, "config.json")))
    raw = st_io.read_model_dir(a.hf_dir)
    t = {k: st_io.to_float32(*v) for k, v in raw.items()}
    t = mlx_layout(t, cfg["num_hidden_layers"])
    q = {"group_size": a.group, "bits": a.bits}
    if a.router_bits and a.router_bits != a.bits:
        for k in sorted(t):
            if k.endswith(".mlp.gate.weight") or k.endswith(".mlp.shared_expert_gate.weight"):
                q[k[: -len(".weight")]] = {"group_size": a.group, "bits": a.router_bits}
    stored, _ = mlx_quant.quantize_state(t, q)
    os.makedirs(a.out_dir, exist_ok=True)
    st_io.write_safetensors(os.path.join(a.out_dir, "model.safetensors"),
                            [(n,) + tuple(stored[n]) for n in sorted(stored)], {"format": "mlx"})
    cfg["quantization"] = q
    cfg["quantization_config"] = q
    for k in ("torch_dtype", "dtype"):
        if k in cfg:
            cfg[k] = "bfloat16"
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for fn in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(a.hf_dir, fn)):
            shutil.copy(os.path.join(a.hf_dir, fn), os.path.join(a.out_dir, fn))
    size = os.path.getsize(os.path.join(a.out_dir, "model.safetensors"))
    print("mlx %d-bit g%d (routers %s): %d tensors, %.2f MB" % (a.bits, a.group, a.router_bits, len(stored), size / 1e6))


if __name__ == "__main__":
    main()
