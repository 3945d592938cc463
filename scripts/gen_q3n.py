#!/usr/bin/python3
"""gen_q3n.py: writes a synthetic Qwen3-Next-shaped checkpoint in the MLX 4-bit layout
(switch_mlp experts, U32-packed weights with BF16 scales/biases, group 64) with random
weights, for benchmarks. Dimensions are Qwen3-Coder-Next's (DESIGN.md): hidden 2048,
16 q / 2 kv heads of 256 with output gate and partial RoPE 0.25, linear attention with
16 key / 32 value heads of 128 and conv kernel 4, experts of intermediate 512, top-10, a
shared expert of 512, vocab 151936; the layer count (full attention every 4th layer) and
the expert count are arguments, and so is the vocabulary (smaller than the real 151936,
it takes the lm_head out of prefill timings that write every position's logits).

    /usr/bin/python3 scripts/gen_q3n.py OUT_DIR [--layers 4] [--experts 512] [--vocab 151936] [--seed 1]

No tokenizer is written: drive it with token ids (flash-moe eval --tokens)."""
import argparse
import json
import os
import struct

import numpy as np

H, VOCAB, NQ, NKV, HD = 2048, 151936, 16, 2, 256
NK, NV, DK, DV, CONV = 16, 32, 128, 128, 4
MOE_I, SHARED_I, TOPK, GROUP, BITS = 512, 512, 10, 64, 4
SCALE = 0.004  # dequantized values s*q - 7.5*s: zero mean, about unit output scale


def bf16(a):
    a = np.asarray(a, dtype=np.float32)
    return (a.view(np.uint32) >> 16).astype(np.uint16)


def tensors(layers, experts, vocab):
    """Yields (name, dtype, shape, kind): kind 'q' = packed weight, 's' scales, 'b' biases,
    'one' = ones, 'zero' = zeros, 'small' = small random bf16."""
    def qmat(name, shape):  # shape [..., out, in]
        *lead, out, inn = shape
        yield name + ".weight", "U32", lead + [out, inn * BITS // 32], "q"
        yield name + ".scales", "BF16", lead + [out, inn // GROUP], "s"
        yield name + ".biases", "BF16", lead + [out, inn // GROUP], "b"

    yield from qmat("model.embed_tokens", [vocab, H])
    yield "model.norm.weight", "BF16", [H], "one"
    yield from qmat("lm_head", [vocab, H])
    for l in range(layers):
        p = f"model.layers.{l}"
        yield p + ".input_layernorm.weight", "BF16", [H], "one"
        yield p + ".post_attention_layernorm.weight", "BF16", [H], "one"
        if (l + 1) % 4 == 0:
            a = p + ".self_attn"
            yield from qmat(a + ".q_proj", [2 * NQ * HD, H])
            yield from qmat(a + ".k_proj", [NKV * HD, H])
            yield from qmat(a + ".v_proj", [NKV * HD, H])
            yield from qmat(a + ".o_proj", [H, NQ * HD])
            yield a + ".q_norm.weight", "BF16", [HD], "one"
            yield a + ".k_norm.weight", "BF16", [HD], "one"
        else:
            a = p + ".linear_attn"
            yield from qmat(a + ".in_proj_qkvz", [2 * NK * DK + 2 * NV * DV, H])
            yield from qmat(a + ".in_proj_ba", [2 * NV, H])
            yield a + ".conv1d.weight", "BF16", [2 * NK * DK + NV * DV, CONV, 1], "small"
            yield a + ".A_log", "BF16", [NV], "zero"
            yield a + ".dt_bias", "BF16", [NV], "zero"
            yield a + ".norm.weight", "BF16", [DV], "one"
            yield from qmat(a + ".out_proj", [H, NV * DV])
        m = p + ".mlp"
        yield from qmat(m + ".gate", [experts, H])
        yield from qmat(m + ".switch_mlp.gate_proj", [experts, MOE_I, H])
        yield from qmat(m + ".switch_mlp.up_proj", [experts, MOE_I, H])
        yield from qmat(m + ".switch_mlp.down_proj", [experts, H, MOE_I])
        yield from qmat(m + ".shared_expert.gate_proj", [SHARED_I, H])
        yield from qmat(m + ".shared_expert.up_proj", [SHARED_I, H])
        yield from qmat(m + ".shared_expert.down_proj", [H, SHARED_I])
        yield from qmat(m + ".shared_expert_gate", [1, H])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out, exist_ok=True)
    ts = list(tensors(a.layers, a.experts, a.vocab))
    hdr, off = {"__metadata__": {"format": "mlx"}}, 0
    for name, dt, shape, _ in ts:
        n = int(np.prod(shape)) * (4 if dt == "U32" else 2)
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(hdr).encode()
    hj += b" " * (-len(hj) % 8)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj)
        for name, dt, shape, kind in ts:
            n = int(np.prod(shape))
            if kind == "q":
                step = 1 << 24
                for i in range(0, n, step):
                    f.write(rng.integers(0, 1 << 32, min(step, n - i), dtype=np.uint32).tobytes())
            elif kind == "s":
                f.write(np.full(n, bf16(SCALE), np.uint16).tobytes())
            elif kind == "b":
                f.write(np.full(n, bf16(-7.5 * SCALE), np.uint16).tobytes())
            elif kind == "one":
                f.write(np.full(n, bf16(1.0), np.uint16).tobytes())
            elif kind == "zero":
                f.write(np.zeros(n, np.uint16).tobytes())
            else:
                f.write(bf16(rng.normal(0, 0.1, n)).tobytes())
    cfg = {
        "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
        "vocab_size": a.vocab, "hidden_size": H, "intermediate_size": 5120,
        "num_hidden_layers": a.layers, "num_attention_heads": NQ, "num_key_value_heads": NKV,
        "head_dim": HD, "linear_num_value_heads": NV, "linear_num_key_heads": NK,
        "linear_key_head_dim": DK, "linear_value_head_dim": DV, "linear_conv_kernel_dim": CONV,
        "num_experts": a.experts, "num_experts_per_tok": TOPK, "moe_intermediate_size": MOE_I,
        "shared_expert_intermediate_size": SHARED_I, "norm_topk_prob": True,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "full_attention_interval": 4,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False, "rope_theta": 5000000.0,
        "partial_rotary_factor": 0.25, "torch_dtype": "bfloat16",
        "quantization": {"group_size": GROUP, "bits": BITS},
        "quantization_config": {"group_size": GROUP, "bits": BITS},
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


if __name__ == "__main__":
    main()
