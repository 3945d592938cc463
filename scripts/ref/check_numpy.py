#!/usr/bin/python3
"""Second, independent check of the fixtures: a plain numpy (float64) token-by-token decoder
with a KV cache, written from the model definitions rather than from models.py, compared
with every fixture's logits.f32.

  /usr/bin/python3 scripts/ref/check_numpy.py [fixture dir ...]

RoPE pairs dimension i with i + d/2 (transformers' rotate_half convention); routing is softmax
-> top-k (-> renormalise); qwen3_moe normalises q/k per head, olmoe over the whole projection.
Prints the relative error per fixture and exits non-zero above 1e-4.
"""
import glob
import json
import os
import sys

import numpy as np

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mlx_quant  # noqa: E402
import st_io  # noqa: E402


def rms(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


def run(d):
    c = json.load(open(os.path.join(d, "config.json")))
    ref = json.load(open(os.path.join(d, "ref.json")))
    raw = st_io.read_model_dir(d)
    T = {k: v.double().numpy() for k, v in mlx_quant.dequantize_checkpoint(raw, c).items()}
    mt = c["model_type"]
    H, KV = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hs = c["hidden_size"]
    D = hs // H if mt == "olmoe" else (c.get("head_dim") or hs // H)
    eps = c["rms_norm_eps"]
    theta = c["rope_theta"] if "rope_theta" in c else c["rope_parameters"]["rope_theta"]
    E = c.get("num_experts", c.get("num_local_experts"))
    k = c["num_experts_per_tok"]
    norm_topk = True if mt == "mixtral" else c.get("norm_topk_prob", False)
    L = c["num_hidden_layers"]

    def W(name):
        return T[name]

    def expert(li, e, x):
        p = "model.layers.%d" % li
        if p + ".mlp.switch_mlp.gate_proj.weight" in T:
            g, u, dn = (T[p + ".mlp.switch_mlp.%s.weight" % n][e] for n in ("gate_proj", "up_proj", "down_proj"))
        elif mt == "mixtral":
            q = p + ".block_sparse_moe.experts.%d." % e
            g, u, dn = W(q + "w1.weight"), W(q + "w3.weight"), W(q + "w2.weight")
        else:
            q = p + ".mlp.experts.%d." % e
            g, u, dn = W(q + "gate_proj.weight"), W(q + "up_proj.weight"), W(q + "down_proj.weight")
        return dn @ (silu(g @ x) * (u @ x))

    def sparse(li):
        if mt in ("mixtral", "olmoe"):
            return True
        return li not in (c.get("mlp_only_layers") or []) and (li + 1) % c.get("decoder_sparse_step", 1) == 0

    inv = theta ** (-np.arange(0, D, 2) / D)

    def rope(v, pos):  # v: [heads, D]
        ang = pos * inv
        cs, sn = np.cos(ang), np.sin(ang)
        a, b = v[:, : D // 2], v[:, D // 2:]
        return np.concatenate([a * cs - b * sn, b * cs + a * sn], axis=1)

    kc = [[] for _ in range(L)]
    vc = [[] for _ in range(L)]
    emb = W("model.embed_tokens.weight")
    head = T.get("lm_head.weight", emb)
    out = []
    for pos, t in enumerate(ref["tokens"]):
        h = emb[t].copy()
        for li in range(L):
            p = "model.layers.%d." % li
            x = rms(h, W(p + "input_layernorm.weight"), eps)
            q = W(p + "self_attn.q_proj.weight") @ x
            kk = W(p + "self_attn.k_proj.weight") @ x
            vv = W(p + "self_attn.v_proj.weight") @ x
            if p + "self_attn.q_proj.bias" in T:
                q = q + W(p + "self_attn.q_proj.bias")
                kk = kk + W(p + "self_attn.k_proj.bias")
                vv = vv + W(p + "self_attn.v_proj.bias")
            if mt == "olmoe":
                q = rms(q, W(p + "self_attn.q_norm.weight"), eps)
                kk = rms(kk, W(p + "self_attn.k_norm.weight"), eps)
            q = q.reshape(H, D)
            kk = kk.reshape(KV, D)
            vv = vv.reshape(KV, D)
            if mt == "qwen3_moe":
                q = np.stack([rms(r, W(p + "self_attn.q_norm.weight"), eps) for r in q])
                kk = np.stack([rms(r, W(p + "self_attn.k_norm.weight"), eps) for r in kk])
            q, kk = rope(q, pos), rope(kk, pos)
            kc[li].append(kk)
            vc[li].append(vv)
            K = np.stack(kc[li])  # [pos+1, KV, D]
            V = np.stack(vc[li])
            att = np.zeros((H, D))
            for hh in range(H):
                g = hh // (H // KV)
                s = K[:, g, :] @ q[hh] / np.sqrt(D)
                s = np.exp(s - s.max())
                s /= s.sum()
                att[hh] = s @ V[:, g, :]
            h = h + W(p + "self_attn.o_proj.weight") @ att.reshape(-1)
            x = rms(h, W(p + "post_attention_layernorm.weight"), eps)
            if sparse(li):
                blk = p + ("block_sparse_moe." if mt == "mixtral" else "mlp.")
                logits = W(blk + "gate.weight") @ x
                pr = np.exp(logits - logits.max())
                pr /= pr.sum()
                top = np.argsort(-pr, kind="stable")[:k]
                wts = pr[top] / (pr[top].sum() if norm_topk else 1.0)
                y = sum(wt * expert(li, e, x) for e, wt in zip(top, wts))
                if mt == "qwen2_moe":
                    se = p + "mlp.shared_expert."
                    sh = W(se + "down_proj.weight") @ (silu(W(se + "gate_proj.weight") @ x) * (W(se + "up_proj.weight") @ x))
                    gate = 1.0 / (1.0 + np.exp(-(W(p + "mlp.shared_expert_gate.weight") @ x)[0]))
                    y = y + gate * sh
            else:
                m = p + "mlp."
                y = W(m + "down_proj.weight") @ (silu(W(m + "gate_proj.weight") @ x) * (W(m + "up_proj.weight") @ x))
            h = h + y
        h = rms(h, W("model.norm.weight"), eps)
        out.append(head @ h)
    ours = np.array(out)
    want = np.fromfile(os.path.join(d, "logits.f32"), dtype="<f4").reshape(len(ref["tokens"]), ref["n_vocab"])
    rel = np.linalg.norm(ours - want) / np.linalg.norm(want)
    same_argmax = bool((ours.argmax(-1) == want.argmax(-1)).all())
    return rel, same_argmax


def main():
    dirs = sys.argv[1:] or sorted(os.path.dirname(p) for p in glob.glob(os.path.join(HERE, "..", "..", "tests", "fixtures", "*", "logits.f32")))
    bad = 0
    for d in dirs:
        if json.load(open(os.path.join(d, "config.json")))["model_type"] not in ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe"):
            continue
        rel, am = run(d)
        ok = rel <= 1e-4 and am
        bad += not ok
        print("%s %-28s rel %.2e argmax %s" % ("ok  " if ok else "FAIL", os.path.basename(os.path.normpath(d)), rel, am))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
