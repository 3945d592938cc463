#!/usr/bin/env python3
"""Train the demo model's tokenizer with Hugging Face `tokenizers`.

  python3 scripts/demo/tokenizer_hf.py --data DIR --out MODEL_DIR [--vocab 4096] [--sample-mb 60]

A byte-level BPE like Qwen2/Qwen3's: NFC normaliser, the Qwen2 split regex (isolated), then
ByteLevel without its own regex; ByteLevel decoder. Special tokens <|endoftext|>, <|im_start|>,
<|im_end|> (ids 0, 1, 2). Trained on a deterministic sample of DIR/train.jsonl (every file
while the sample is under --sample-mb) plus DIR/chat_train.jsonl.
Writes MODEL_DIR/tokenizer.json and MODEL_DIR/tokenizer_config.json (ChatML chat template of
chat_data.py, eos <|im_end|>, pad <|endoftext|>).
"""
import argparse
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_data import CHAT_TEMPLATE  # noqa: E402

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def texts(data, sample_bytes):
    n = 0
    with open(os.path.join(data, "train.jsonl")) as f:
        for line in f:
            t = json.loads(line)["text"]
            n += len(t)
            yield t
            if n >= sample_bytes:
                break
    with open(os.path.join(data, "chat_train.jsonl")) as f:
        for line in f:
            yield json.loads(line)["text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--sample-mb", type=float, default=60.0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts(a.data, int(a.sample_mb * 1e6)), trainer=trainer)
    assert tok.get_vocab_size() == a.vocab, tok.get_vocab_size()
    tok.save(os.path.join(a.out, "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    added = {str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True} for s in SPECIALS}
    tc = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
          "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
          "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
          "errors": "replace", "model_max_length": 2048, "pad_token": "<|endoftext|>",
          "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")
    print("tokenizer: vocab %d, specials %s" % (tok.get_vocab_size(), ids), flush=True)


if __name__ == "__main__":
    main()
