#!/usr/bin/python3
"""Train the demo qwen2_moe model on CPU with the PyTorch transcription in scripts/ref/models.py.

  /usr/bin/python3 scripts/demo/train.py --minutes 25 --seed 0 --batch 8 --chat-frac 0.375 --work tmp/demo-train2

Inputs: tmp/demo-data/{train,val,chat_train,chat_val}.jsonl (make_corpus.py, chat_data.py) and
models/demo/tokenizer.json (bpe.py). Token streams are cached in tmp/demo-data/*.npy.
Each step draws --batch windows of --seq tokens: a fraction --chat-frac from the ChatML
instruction stream, the rest from the code stream (documents joined by <|endoftext|>).
Loss: next-token cross entropy + router_aux_loss_coef * load_balancing_loss (as transformers'
Qwen2MoeForCausalLM with output_router_logits). AdamW, linear warmup then cosine decay over the
wall-clock budget. Checkpoints to tmp/demo-train/ckpt.pt every --ckpt-minutes.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts", "ref"))
sys.dont_write_bytecode = True
import models  # noqa: E402
from bpe import Tokenizer  # noqa: E402

DEMO_CONFIG = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 4093,
    "decoder_sparse_step": 1,
    "eos_token_id": 4095,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "max_position_embeddings": 2048,
    "max_window_layers": 4,
    "mlp_only_layers": [],
    "model_type": "qwen2_moe",
    "moe_intermediate_size": 64,
    "norm_topk_prob": False,
    "num_attention_heads": 4,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 256,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 4096,
}


def load_balancing_loss(router_logits, num_experts, top_k):
    """transformers load_balancing_loss_func (modeling_qwen2_moe.py), attention_mask=None."""
    cat = torch.cat(router_logits, dim=0)
    routing_weights = F.softmax(cat, dim=-1)
    _, selected_experts = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = F.one_hot(selected_experts, num_experts)
    tokens_per_expert = torch.mean(expert_mask.float(), dim=0)
    router_prob_per_expert = torch.mean(routing_weights, dim=0)
    overall_loss = torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))
    return overall_loss * num_experts


def token_stream(path, tok, eot, cache):
    if os.path.exists(cache):
        return np.load(cache)
    ids = []
    with open(path) as f:
        for line in f:
            ids.extend(tok.encode(json.loads(line)["text"]))
            ids.append(eot)
    a = np.array(ids, dtype=np.uint16)
    np.save(cache, a)
    return a


def init_weights(model, std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def batch(stream, n, seq, rng):
    idx = rng.integers(0, len(stream) - seq - 1, size=n)
    x = np.stack([stream[i:i + seq + 1] for i in idx]).astype(np.int64)
    return torch.from_numpy(x)


@torch.no_grad()
def evaluate(model, stream, seq, max_tokens=32768, bf16=False):
    """Mean next-token cross entropy over consecutive windows of the stream (first max_tokens)."""
    model.eval()
    tot, n = 0.0, 0
    for s in range(0, min(len(stream) - seq - 1, max_tokens), seq):
        x = torch.from_numpy(stream[s:s + seq + 1].astype(np.int64))[None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x[:, :-1]).float()
        tot += float(F.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
        n += seq
    model.train()
    return tot / max(n, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "tmp", "demo-data"))
    ap.add_argument("--work", default=os.path.join(ROOT, "tmp", "demo-train"))
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--chat-frac", type=float, default=0.25)
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.work, exist_ok=True)
    tok = Tokenizer.load(os.path.join(ROOT, "models", "demo", "tokenizer.json"))
    eot = tok.special["<|endoftext|>"]
    assert len(tok.vocab) == DEMO_CONFIG["vocab_size"]
    train = token_stream(os.path.join(a.data, "train.jsonl"), tok, eot, os.path.join(a.data, "train_ids.npy"))
    val = token_stream(os.path.join(a.data, "val.jsonl"), tok, eot, os.path.join(a.data, "val_ids.npy"))
    chat = token_stream(os.path.join(a.data, "chat_train.jsonl"), tok, eot, os.path.join(a.data, "chat_train_ids.npy"))
    print("tokens: train %d val %d chat %d" % (len(train), len(val), len(chat)), flush=True)

    cfg = models.Cfg(DEMO_CONFIG)
    model = models.MoeForCausalLM(cfg)
    init_weights(model, DEMO_CONFIG["initializer_range"], a.seed)
    nparam = sum(p.numel() for p in model.parameters())
    print("params %d (%.1f MB in BF16)" % (nparam, nparam * 2 / 1e6), flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    ckpt_path = os.path.join(a.work, "ckpt.pt")
    step, elapsed0 = 0, 0.0
    if a.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed0 = ck["step"], ck["elapsed"]
        print("resumed at step %d, %.1f min" % (step, elapsed0 / 60), flush=True)
    rng = np.random.default_rng(a.seed + step)
    budget = a.minutes * 60
    t0 = time.time() - elapsed0
    last_ckpt = time.time()
    warm = 60.0  # seconds of linear warmup
    model.train()
    n_chat = int(round(a.batch * a.chat_frac))

    def save(final=False):
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": time.time() - t0, "config": DEMO_CONFIG, "args": vars(a)}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)
        if final:
            torch.save({"model": model.state_dict(), "step": step, "config": DEMO_CONFIG, "args": vars(a)},
                       os.path.join(a.work, "final.pt"))

    ema = None
    while True:
        el = time.time() - t0
        if el >= budget or (a.max_steps and step >= a.max_steps):
            break
        frac = el / budget
        lr = a.lr * min(1.0, (el + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for gr in opt.param_groups:
            gr["lr"] = lr
        xs = [batch(train, a.batch - n_chat, a.seq, rng)]
        if n_chat:
            xs.append(batch(chat, n_chat, a.seq, rng))
        x = torch.cat(xs)
        # BF16 autocast: Debian's torch 1.13 has a generic fp32 BLAS (~6 GFLOP/s/core) but
        # oneDNN BF16 matmuls (~190 GFLOP/s/core on AVX512-BF16); master weights stay fp32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, routers = model(x[:, :-1], return_router_logits=True)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        aux = load_balancing_loss([r.float() for r in routers], cfg.num_experts, cfg.top_k)
        loss = ce + DEMO_CONFIG["router_aux_loss_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = float(ce) if ema is None else 0.95 * ema + 0.05 * float(ce)
        if step % 10 == 0:
            tps = step * a.batch * a.seq / max(time.time() - t0, 1e-9)
            print("step %5d  %6.1f min  lr %.2e  ce %.3f (ema %.3f)  aux %.3f  %.0f tok/s" %
                  (step, (time.time() - t0) / 60, lr, float(ce), ema, float(aux), tps), flush=True)
        if time.time() - last_ckpt > a.ckpt_minutes * 60:
            save()
            last_ckpt = time.time()
    save(final=True)
    vl = evaluate(model, val, a.seq, bf16=True)
    print("done: %d steps, %.1f min, val loss %.4f (first 32768 val tokens, bf16 autocast)"
          % (step, (time.time() - t0) / 60, vl), flush=True)


if __name__ == "__main__":
    main()
