#!/usr/bin/env python3
"""Train the demo model with transformers' own Qwen2MoeForCausalLM (GPU machine).

  python3 scripts/demo/train_hf.py --data DIR --tok MODEL_DIR --work WORK --minutes 8 --seed 0

Inputs: DIR/{train,val,chat_train,chat_val}.jsonl (make_corpus.py, chat_data.py) and
MODEL_DIR/tokenizer.json (tokenizer_hf.py). Token streams are cached as DIR/*.npy (uint16).
Each step draws --batch windows of --seq tokens: a fraction --chat-frac from the ChatML
instruction stream, the rest from the code stream (documents joined by <|endoftext|>).
Loss: transformers' own (cross entropy + router_aux_loss_coef * load-balancing loss, with
output_router_logits). AdamW (0.9, 0.95, wd 0.1), linear warmup then cosine decay to 10% over
the wall-clock budget, gradient clip 1.0, bf16 autocast with float32 master weights.
Writes WORK/hf/ with save_pretrained (float32 safetensors + config.json) and WORK/train.json.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

ARCH = dict(vocab_size=4096, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
            num_key_value_heads=2, intermediate_size=1024, moe_intermediate_size=64,
            shared_expert_intermediate_size=512, num_experts=64, num_experts_per_tok=4,
            norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=2048,
            rms_norm_eps=1e-6, tie_word_embeddings=False, router_aux_loss_coef=0.001,
            initializer_range=0.02, use_sliding_window=False, sliding_window=None, attention_dropout=0.0)
ROPE_THETA = 10000.0


def stream(tok, path, eot, cache):
    if os.path.exists(cache):
        return np.load(cache)
    texts = [json.loads(line)["text"] for line in open(path)]
    ids = []
    for i in range(0, len(texts), 4096):
        for e in tok.encode_batch(texts[i:i + 4096], add_special_tokens=False):
            ids.extend(e.ids)
            ids.append(eot)
    a = np.array(ids, dtype=np.uint16)
    np.save(cache, a)
    return a


def windows(s, n, seq, rng):
    idx = rng.integers(0, len(s) - seq - 1, size=n)
    return torch.from_numpy(np.stack([s[i:i + seq + 1] for i in idx]).astype(np.int64))


def make_config(tok):
    kw = dict(ARCH, bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"),
              pad_token_id=tok.token_to_id("<|endoftext|>"))
    try:
        cfg = Qwen2MoeConfig(rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, **kw)
    except TypeError:
        cfg = Qwen2MoeConfig(rope_theta=ROPE_THETA, **kw)
    return cfg


@torch.no_grad()
def val_loss(model, s, seq, max_tokens, dev, bf16):
    model.eval()
    tot, n = 0.0, 0
    for st in range(0, min(len(s) - seq - 1, max_tokens), seq * 16):
        xs = [s[i:i + seq + 1] for i in range(st, min(st + seq * 16, len(s) - seq - 1, max_tokens), seq)]
        x = torch.from_numpy(np.stack(xs).astype(np.int64)).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x[:, :-1]).logits.float()
        tot += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                       reduction="sum"))
        n += x[:, 1:].numel()
    model.train()
    return tot / max(n, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds")
    ap.add_argument("--chat-frac", type=float, default=0.2)
    ap.add_argument("--deadline", type=float, default=0, help="unix time by which training must end")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(a.work, exist_ok=True)
    tok = Tokenizer.from_file(os.path.join(a.tok, "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    t0 = time.time()
    train = stream(tok, os.path.join(a.data, "train.jsonl"), eot, os.path.join(a.data, "train_ids.npy"))
    val = stream(tok, os.path.join(a.data, "val.jsonl"), eot, os.path.join(a.data, "val_ids.npy"))
    chat = stream(tok, os.path.join(a.data, "chat_train.jsonl"), eot, os.path.join(a.data, "chat_train_ids.npy"))
    chat_val = stream(tok, os.path.join(a.data, "chat_val.jsonl"), eot, os.path.join(a.data, "chat_val_ids.npy"))
    print("tokens: train %d val %d chat %d chat_val %d (%.0f s)" % (len(train), len(val), len(chat), len(chat_val),
                                                                 time.time() - t0), flush=True)
    cfg = make_config(tok)
    kw = {}
    model = None
    for impl in ("grouped_mm", None):
        try:
            if impl:
                cfg._experts_implementation = impl
            cfg._attn_implementation = "sdpa"
            model = Qwen2MoeForCausalLM(cfg)
            break
        except Exception as e:  # an older transformers without experts backends
            print("experts implementation %s not available: %s" % (impl, e), flush=True)
    model.to(dev).train()
    print("experts impl %s, attn %s" % (getattr(model.config, "_experts_implementation", None),
                                        getattr(model.config, "_attn_implementation", None)), flush=True)
    nparam = sum(p.numel() for p in model.parameters())
    print("params %d" % nparam, flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    rng = np.random.default_rng(a.seed)
    n_chat = int(round(a.batch * a.chat_frac))
    budget = a.minutes * 60
    if a.deadline:
        budget = max(30.0, min(budget, a.deadline - time.time()))
    print("training budget %.0f s" % budget, flush=True)
    step, ema, log = 0, None, []
    t0 = time.time()
    while True:
        el = time.time() - t0
        if el >= budget:
            break
        lr = a.lr * min(1.0, (el + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * el / budget)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = torch.cat([windows(train, a.batch - n_chat, a.seq, rng), windows(chat, n_chat, a.seq, rng)]).to(dev, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            ce = float(loss) - cfg.router_aux_loss_coef * float(out.aux_loss)
            ema = ce if ema is None else 0.8 * ema + 0.2 * ce
            tps = step * a.batch * a.seq / (time.time() - t0)
            print("step %6d %5.1f min lr %.2e ce %.3f (ema %.3f) aux %.3f %.0f tok/s" %
                  (step, (time.time() - t0) / 60, lr, ce, ema, float(out.aux_loss), tps), flush=True)
            log.append({"step": step, "min": round((time.time() - t0) / 60, 2), "ce": round(ce, 4)})
    elapsed = time.time() - t0
    vl = val_loss(model, val, a.seq, 1 << 20, dev, True)
    cvl = val_loss(model, chat_val, a.seq, 1 << 20, dev, True)
    print("done: %d steps, %.1f min, %d tokens; val loss %.4f, chat val loss %.4f (bf16 autocast)" %
          (step, elapsed / 60, step * a.batch * a.seq, vl, cvl), flush=True)
    gc = model.generation_config
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty = True, 0.7, 0.9, 20, 1.05
    gc.eos_token_id = [tok.token_to_id("<|im_end|>"), eot]
    gc.bos_token_id = gc.pad_token_id = eot
    model.save_pretrained(os.path.join(a.work, "hf"), safe_serialization=True)
    with open(os.path.join(a.work, "train.json"), "w") as f:
        json.dump({"args": vars(a), "steps": step, "tokens": step * a.batch * a.seq, "seconds": round(elapsed, 1),
                   "params": nparam, "val_loss_bf16_autocast": round(vl, 4), "chat_val_loss_bf16_autocast": round(cvl, 4),
                   "stream_tokens": {"train": int(len(train)), "val": int(len(val)), "chat": int(len(chat)),
                                     "chat_val": int(len(chat_val))},
                   "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                   "gpu": torch.cuda.get_device_name(0), "log": log}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
