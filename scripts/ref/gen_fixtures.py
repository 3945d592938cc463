#!/usr/bin/python3
"""Build tiny random-weight MoE checkpoints and their reference logits.

  /usr/bin/python3 scripts/ref/gen_fixtures.py [--only NAME[,NAME]] [--out tests/fixtures]

Each fixture is a Hugging Face model directory tests/fixtures/<name>/ with
  config.json                        as transformers writes it (published-checkpoint spelling
                                     or transformers-5 spelling, see SPECS)
  model.safetensors                  (or model-0000N-of-0000M.safetensors + index json)
  ref.json                           {"tokens", "n_vocab", "arch", "dtype", "source", ...}
  logits.f32                         float32 little-endian [n_tokens, n_vocab]
The reference logits come from scripts/ref/models.py (a transcription of transformers'
modeling code) in float32, run on exactly the values stored (BF16/F16 weights upcast,
MLX-quantized weights dequantized). Everything is seeded; rerunning rewrites identical files.
"""
import argparse
import sys
sys.dont_write_bytecode = True
import json
import os
import shutil

import numpy as np  # noqa: F401
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402
import st_io  # noqa: E402
import mlx_quant  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
N_TOKENS = 24
STD = 0.08
SOURCE = ("scripts/ref/models.py: PyTorch %s float32 transcription of transformers "
          "src/transformers/models/%s/modeling_%s.py (eager attention)")

# ---------------------------------------------------------------------------------------------
# config.json writers


def base_config(arch, dims, style, dtype_name):
    """A config.json dict the way transformers (style "t5": transformers 5.x) or a published
    checkpoint (style "pub": transformers 4.x save_pretrained) spells it."""
    torch_dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype_name]
    arch_cls = {"qwen3_moe": "Qwen3MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                "mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM"}[arch]
    c = {
        "architectures": [arch_cls],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": dims["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": dims["inter"],
        "max_position_embeddings": 4096,
        "model_type": arch,
        "num_attention_heads": dims["heads"],
        "num_experts_per_tok": dims["top_k"],
        "num_hidden_layers": dims["layers"],
        "num_key_value_heads": dims["kv_heads"],
        "output_router_logits": False,
        "rms_norm_eps": dims.get("eps", 1e-6),
        "router_aux_loss_coef": 0.001,
        "tie_word_embeddings": dims.get("tie", False),
        "use_cache": True,
        "vocab_size": dims["vocab"],
    }
    if arch == "mixtral":
        c["num_local_experts"] = dims["experts"]
        c["sliding_window"] = None
    else:
        c["num_experts"] = dims["experts"]
    if arch in ("qwen3_moe", "qwen2_moe"):
        c["moe_intermediate_size"] = dims["moe_inter"]
        c["norm_topk_prob"] = dims["norm_topk"]
        c["decoder_sparse_step"] = dims.get("sparse_step", 1)
        c["mlp_only_layers"] = dims.get("mlp_only", [])
        c["max_window_layers"] = dims["layers"]
        c["sliding_window"] = None
        c["use_sliding_window"] = False
    if arch == "qwen3_moe":
        c["attention_bias"] = False
        c["head_dim"] = dims["head_dim"]
    if arch == "qwen2_moe":
        c["shared_expert_intermediate_size"] = dims["shared_inter"]
    if arch == "olmoe":
        c["attention_bias"] = False
        c["clip_qkv"] = None
        c["norm_topk_prob"] = dims["norm_topk"]
        c["pad_token_id"] = 0
    theta = dims.get("rope_theta", 10000.0)
    if style == "pub":
        c["rope_theta"] = theta
        c["rope_scaling"] = None
        c["torch_dtype"] = torch_dtype
        c["transformers_version"] = "4.51.0"
    else:
        c["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
        c["dtype"] = torch_dtype
        c["transformers_version"] = "5.0.0"
    return dict(sorted(c.items()))


# ---------------------------------------------------------------------------------------------
# fixture specifications

D64 = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=300)

SPECS = [
    # name, arch, style, dtype, dims, extra
    ("qwen3_moe_f32", "qwen3_moe", "pub", "F32",
     dict(D64, layers=3, inter=48, moe_inter=16, experts=8, top_k=4, norm_topk=True, mlp_only=[1],
          rope_theta=1000000.0), {}),
    ("qwen3_moe_bf16", "qwen3_moe", "t5", "BF16",
     dict(D64, layers=4, inter=64, moe_inter=32, experts=8, top_k=2, norm_topk=False, sparse_step=2,
          tie=True), {}),
    ("qwen3_moe_sharded", "qwen3_moe", "pub", "BF16",
     dict(D64, layers=3, inter=64, moe_inter=32, experts=8, top_k=4, norm_topk=True), {"shards": 2}),
    ("qwen3_moe_switch", "qwen3_moe", "pub", "BF16",
     dict(D64, layers=3, inter=64, moe_inter=32, experts=8, top_k=4, norm_topk=True, mlp_only=[0]),
     {"stacked": True}),
    ("qwen2_moe_f32", "qwen2_moe", "pub", "F32",
     dict(D64, layers=2, inter=64, moe_inter=16, shared_inter=32, experts=8, top_k=4, norm_topk=False,
          rope_theta=1000000.0), {}),
    ("qwen2_moe_bf16", "qwen2_moe", "t5", "BF16",
     dict(D64, layers=3, inter=64, moe_inter=32, shared_inter=64, experts=8, top_k=2, norm_topk=True), {}),
    ("qwen2_moe_f16", "qwen2_moe", "pub", "F16",
     dict(D64, layers=2, inter=64, moe_inter=32, shared_inter=48, experts=8, top_k=4, norm_topk=False), {}),
    ("mixtral_f32", "mixtral", "pub", "F32",
     dict(D64, layers=2, inter=24, experts=8, top_k=2, eps=1e-5, rope_theta=1000000.0), {}),
    ("mixtral_bf16", "mixtral", "t5", "BF16",
     dict(D64, layers=3, inter=32, experts=8, top_k=2, eps=1e-5), {}),
    ("olmoe_f32", "olmoe", "pub", "F32",
     dict(D64, layers=2, inter=24, experts=8, top_k=2, norm_topk=False, eps=1e-5), {}),
    ("olmoe_bf16", "olmoe", "t5", "BF16",
     dict(D64, layers=3, inter=32, experts=8, top_k=4, norm_topk=True, eps=1e-5), {}),
]

# MLX-quantized qwen3_moe fixtures (stacked switch_mlp experts, quantized embed and lm_head).
# Every quantized input dim must be a multiple of the group size: moe_inter = max(64, group).
D128 = dict(hidden=128, heads=4, kv_heads=2, head_dim=32, vocab=320, layers=2, inter=128, moe_inter=64,
            experts=8, top_k=4, norm_topk=True, mlp_only=[0])


def qdims(gs):
    d = dict(D128)
    if gs > 64:
        d.update(moe_inter=gs, experts=4, top_k=2)
    return d
QSPECS = [
    # name, bits, group_size, overrides {module path: {bits, group_size}}
    ("qwen3_moe_q4_g32", 4, 32, None),
    ("qwen3_moe_q4_g64", 4, 64, None),
    ("qwen3_moe_q4_g128", 4, 128, None),
    ("qwen3_moe_q8_g32", 8, 32, None),
    ("qwen3_moe_q8_g64", 8, 64, None),
    ("qwen3_moe_q8_g128", 8, 128, None),
    ("qwen3_moe_q2_g64", 2, 64, None),
    ("qwen3_moe_q3_g64", 3, 64, None),
    ("qwen3_moe_q5_g64", 5, 64, None),
    ("qwen3_moe_q6_g64", 6, 64, None),
    ("qwen3_moe_q4_g64_router8", 4, 64, "router8"),
]


# ---------------------------------------------------------------------------------------------


def random_state(model, seed):
    """Weights ~ N(0, STD); norm weights ~ 1 + N(0, 0.1) so that they matter; biases ~ N(0, STD)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        else:
            sd[name] = STD * torch.randn(p.shape, generator=g)
    return sd


def min_topk_gap(model, tokens):
    """Smallest gap between the k-th and (k+1)-th routing probability over all tokens and MoE
    layers: a large gap means float rounding cannot change which experts are chosen."""
    with torch.no_grad():
        _, routers = model(torch.tensor([tokens]), return_router_logits=True)
    gap = 1.0
    k = model.cfg.top_k
    for rl in routers:
        p = torch.softmax(rl.float(), dim=-1).sort(dim=-1, descending=True).values
        gap = min(gap, float((p[:, k - 1] - p[:, k]).min()))
    return gap


def stack_experts(sd, cfg):
    """Per-expert tensors -> MLX switch_mlp stacked tensors [E, out, in]."""
    out = {}
    stacks = {}
    for name, t in sd.items():
        if ".mlp.experts." in name:
            pre, post = name.split(".mlp.experts.")
            e, proj = post.split(".")[0], post.split(".")[1]
            stacks.setdefault((pre, proj), {})[int(e)] = t
        else:
            out[name] = t
    for (pre, proj), d in stacks.items():
        out["%s.mlp.switch_mlp.%s.weight" % (pre, proj)] = torch.stack([d[e] for e in range(len(d))])
    return out


def write_fixture(outdir, name, arch, config, stored, model, tokens, dtype_name, shards=1, extra_ref=None):
    """stored: {tensor name: (dtype, shape, raw bytes)}; model: float32 reference holding the
    exact stored values."""
    d = os.path.join(outdir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    names = sorted(stored)
    if shards == 1:
        st_io.write_safetensors(os.path.join(d, "model.safetensors"),
                                [(n,) + stored[n] for n in names])
    else:
        per = (len(names) + shards - 1) // shards
        weight_map = {}
        total = 0
        for s in range(shards):
            fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
            part = names[s * per:(s + 1) * per]
            st_io.write_safetensors(os.path.join(d, fn), [(n,) + stored[n] for n in part])
            for n in part:
                weight_map[n] = fn
                total += len(stored[n][2])
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")
    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0].to(torch.float32)
    logits.numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
    ref = {
        "tokens": tokens,
        "n_vocab": config["vocab_size"],
        "arch": arch,
        "dtype": dtype_name,
        "source": SOURCE % (torch.__version__, arch, arch),
        "min_topk_gap": round(min_topk_gap(model, tokens), 6),
        "argmax": logits.argmax(-1).tolist(),
        "min_argmax_margin": round(float((logits.topk(2, dim=-1).values[:, 0] - logits.topk(2, dim=-1).values[:, 1]).min()), 6),
    }
    if extra_ref:
        ref.update(extra_ref)
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print("%-28s %-10s %-5s %7d bytes  min_topk_gap %.4f  min_argmax_margin %.4f"
          % (name, arch, dtype_name, size, ref["min_topk_gap"], ref["min_argmax_margin"]))
    assert size < 600 * 1024, (name, size)
    # self-check: reload what was written and recompute
    reloaded = models.load_model_dir(d, dequant=mlx_quant.dequantize_checkpoint)
    with torch.no_grad():
        l2 = reloaded(torch.tensor([tokens]))[0]
    assert torch.equal(l2, logits), name


def pick_tokens(model, vocab, seed):
    """24 random token ids; redraw (deterministically) while routing or the argmax would be
    near a tie, so that float rounding in a correct engine cannot flip either."""
    g = torch.Generator().manual_seed(seed + 7)
    best, best_score = None, -1.0
    for _ in range(60):
        tokens = torch.randint(0, vocab, (N_TOKENS,), generator=g).tolist()
        with torch.no_grad():
            top2 = model(torch.tensor([tokens]))[0].topk(2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())
        score = min(min_topk_gap(model, tokens) / 2e-3, margin / 1e-3)
        if score > best_score:
            best, best_score = tokens, score
        if score >= 1.0:
            break
    return best


def build_plain(outdir, spec, seed):
    name, arch, style, dt, dims, extra = spec
    config = base_config(arch, dims, style, dt)
    cfg = models.Cfg(config)
    model = models.MoeForCausalLM(cfg)
    sd = random_state(model, seed)
    sd = {k: st_io.round_to(v, dt) for k, v in sd.items()}
    model.load_state_dict(sd)
    model.eval()
    tokens = pick_tokens(model, cfg.vocab_size, seed)
    to_store = stack_experts(sd, cfg) if extra.get("stacked") else sd
    stored = {k: (dt, tuple(v.shape), st_io.tensor_bytes(v, dt)) for k, v in to_store.items()}
    write_fixture(outdir, name, arch, config, stored, model, tokens, dt, shards=extra.get("shards", 1),
                  extra_ref={"layout": "switch_mlp" if extra.get("stacked") else "per_expert",
                             "config_style": "published" if style == "pub" else "transformers5"})


def build_quant(outdir, qspec, seed):
    name, bits, gs, override = qspec
    arch = "qwen3_moe"
    dims = qdims(gs)
    config = base_config(arch, dims, "pub", "BF16")
    cfg = models.Cfg(config)
    model = models.MoeForCausalLM(cfg)
    sd = stack_experts(random_state(model, seed), cfg)
    qcfg = {"group_size": gs, "bits": bits}
    per_module = {}
    if override == "router8":
        for i in range(dims["layers"]):
            if models.layer_is_sparse(cfg, i):
                per_module["model.layers.%d.mlp.gate" % i] = {"group_size": 64, "bits": 8}
    qcfg.update(per_module)
    stored, deq = mlx_quant.quantize_state(sd, qcfg)
    config["quantization"] = qcfg
    config["quantization_config"] = dict(qcfg)
    config = dict(sorted(config.items()))
    deq = models.unstack_experts(deq, cfg)
    model.load_state_dict(deq)
    model.eval()
    tokens = pick_tokens(model, cfg.vocab_size, seed)
    write_fixture(outdir, name, arch, config, stored, model, tokens, "mlx%d" % bits,
                  extra_ref={"layout": "switch_mlp", "config_style": "published+mlx",
                             "quantization": qcfg,
                             "reference_weights": "dequantized (scale * q + bias, float32)"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    only = set(x for x in a.only.split(",") if x)
    mlx_quant.self_check()
    for i, spec in enumerate(SPECS):
        if not only or spec[0] in only:
            build_plain(a.out, spec, 1000 + i)
    for i, q in enumerate(QSPECS):
        if not only or q[0] in only:
            build_quant(a.out, q, 2000 + i)


if __name__ == "__main__":
    main()
