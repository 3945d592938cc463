#!/usr/bin/python3
"""Byte-level BPE tokenizer: trainer, encoder/decoder, and writer of a standard Hugging Face
tokenizer.json laid out like Qwen2/Qwen3's (NFC normalizer; pre-tokenizer Sequence of
Split(Qwen2 regex, Isolated) and ByteLevel(add_prefix_space=false, use_regex=false); BPE model
with vocab + merges; ByteLevel decoder; ChatML special tokens as added tokens).

  /usr/bin/python3 scripts/demo/bpe.py --data tmp/demo-data --vocab 4096 --out models/demo

Needs Debian's python3-regex for \\p{L}/\\p{N}. Training: classic BPE over pre-token counts,
most frequent pair first, ties broken by the lexicographically smallest pair; incremental
pair counts with a lazy max-heap.
"""
import argparse
import heapq
import json
import os
import unicodedata

import regex

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PRE = regex.compile(QWEN2_PATTERN)


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode char table (used by the ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()
U2B = {v: k for k, v in B2U.items()}


def pretokenize(text):
    """NFC, Qwen2 regex split, bytes -> byte-level unicode strings."""
    text = unicodedata.normalize("NFC", text)
    return ["".join(B2U[b] for b in m.encode("utf-8")) for m in PRE.findall(text)]


def train(texts, vocab_size):
    counts = {}
    for t in texts:
        for w in pretokenize(t):
            counts[w] = counts.get(w, 0) + 1
    words = [list(w) for w in counts]
    freqs = list(counts.values())
    pair_count = {}
    where = {}
    for i, w in enumerate(words):
        f = freqs[i]
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] = pair_count.get((a, b), 0) + f
            where.setdefault((a, b), set()).add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    base = sorted(B2U.values(), key=lambda ch: U2B[ch])
    vocab = {ch: i for i, ch in enumerate(base)}
    merges = []
    n_merges = vocab_size - len(SPECIALS) - 256
    while len(merges) < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc or negc == 0:
            continue
        a, b = pair
        new = a + b
        merges.append(pair)
        vocab[new] = len(vocab)
        changed = {}
        for i in list(where.get(pair, ())):
            w = words[i]
            f = freqs[i]
            # remove old pairs of this word
            for x, y in zip(w, w[1:]):
                pair_count[(x, y)] -= f
                changed[(x, y)] = True
                s = where.get((x, y))
                if s is not None:
                    s.discard(i)
            j = 0
            nw = []
            while j < len(w):
                if j < len(w) - 1 and w[j] == a and w[j + 1] == b:
                    nw.append(new)
                    j += 2
                else:
                    nw.append(w[j])
                    j += 1
            words[i] = nw
            for x, y in zip(nw, nw[1:]):
                pair_count[(x, y)] = pair_count.get((x, y), 0) + f
                changed[(x, y)] = True
                where.setdefault((x, y), set()).add(i)
        for p in changed:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
        pair_count.pop(pair, None)
        where.pop(pair, None)
    return vocab, merges


class Tokenizer:
    """Encoder matching HF tokenizers' BPE (merges applied lowest rank first)."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.inv = {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.special = {s: vocab[s] for s in SPECIALS}
        self.cache = {}
        self.split_re = regex.compile("(" + "|".join(regex.escape(s) for s in SPECIALS) + ")")

    @classmethod
    def load(cls, path):
        with open(path) as f:
            tj = json.load(f)
        vocab = dict(tj["model"]["vocab"])
        for at in tj["added_tokens"]:
            vocab[at["content"]] = at["id"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in tj["model"]["merges"]]
        return cls(vocab, merges)

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, bi = None, -1
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            parts = parts[:bi] + [parts[bi] + parts[bi + 1]] + parts[bi + 2:]
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for piece in self.split_re.split(text):
            if not piece:
                continue
            if piece in self.special:
                ids.append(self.special[piece])
                continue
            for w in pretokenize(piece):
                ids.extend(self.bpe(w))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.inv[i]
            if t in self.special:
                out += t.encode()
            else:
                out += bytes(U2B[c] for c in t)
        return out.decode("utf-8", errors="replace")


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful coding assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tokenizer(outdir, vocab, merges):
    n = len(vocab)
    added = []
    for k, s in enumerate(SPECIALS):
        added.append({"id": n + k, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            dict(bl)]},
        "post_processor": dict(bl),
        "decoder": dict(bl),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [list(m) for m in merges]},
    }
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
    dec = {}
    for a in added:
        dec[str(a["id"])] = {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
    tc = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": dec,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(outdir, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="tmp/demo-data")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-bytes", type=int, default=8_000_000)
    ap.add_argument("--out", default="models/demo")
    a = ap.parse_args()
    texts, nb = [], 0
    with open(os.path.join(a.data, "train.jsonl")) as f:
        for line in f:
            t = json.loads(line)["text"]
            texts.append(t)
            nb += len(t)
            if nb > a.max_bytes:
                break
    chat = os.path.join(a.data, "chat_train.jsonl")
    if os.path.exists(chat):
        with open(chat) as f:
            texts += [json.loads(line)["text"].replace("<|im_start|>", "").replace("<|im_end|>", "") for line in f]
    vocab, merges = train(texts, a.vocab)
    write_tokenizer(a.out, vocab, merges)
    print("vocab", len(vocab) + len(SPECIALS), "merges", len(merges), "trained on", nb, "bytes")


if __name__ == "__main__":
    main()
