#!/usr/bin/env bash
# gpu_build.sh: build the demo model from nothing on the GPU machine (transformers 5, tokenizers,
# PyTorch with CUDA), in one command:
#   MINUTES=7 [DEADLINE=unix-time] scripts/demo/gpu_build.sh OUTDIR
# 1. corpus from the machine's installed Python sources (make_corpus.py, permissive licenses)
# 2. instruction pairs (chat_data.py), 3. byte-level BPE with HF tokenizers (tokenizer_hf.py),
# 4. training with transformers' Qwen2MoeForCausalLM, save_pretrained (train_hf.py),
# 5. MLX 4-bit conversion (to_mlx.py), 6. references and evaluation by transformers
#    (reference_hf.py).
# OUTDIR/demo/ then holds the files of models/demo/ (model, config, tokenizer, ref/, training/).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:?usage: gpu_build.sh OUTDIR}
W=${WORK:-/tmp/demo-build}
MINUTES=${MINUTES:-7}
CAP_MB=${CAP_MB:-30}
PAIRS=${PAIRS:-40000}
SAMPLE_MB=${SAMPLE_MB:-60}
SEED=${SEED:-0}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
mkdir -p "$W/data" "$W/tok" "$OUTDIR/demo/training"
t0=$(date +%s)
stage() { echo "== $(( $(date +%s) - t0 )) s: $*"; }
stage corpus
python3 scripts/demo/make_corpus.py --out "$W/data" --cap-mb "$CAP_MB" --manifest "$OUTDIR/demo/training/manifest.json"
stage "instruction pairs"
python3 scripts/demo/chat_data.py --out "$W/data" --corpus "$W/data" --max-corpus-pairs "$PAIRS"
stage tokenizer
python3 scripts/demo/tokenizer_hf.py --data "$W/data" --out "$W/tok" --sample-mb "$SAMPLE_MB"
stage "training ($MINUTES min)"
python3 scripts/demo/train_hf.py --data "$W/data" --tok "$W/tok" --work "$W/train" --minutes "$MINUTES" --seed "$SEED" \
    --deadline "${DEADLINE:-0}" \
    2>&1 | tee "$OUTDIR/demo/training/train.log"
cp "$W/train/train.json" "$OUTDIR/demo/training/train.json"
cp "$W/tok/tokenizer.json" "$W/tok/tokenizer_config.json" "$W/train/hf/"
stage "MLX 4-bit"
python3 scripts/demo/to_mlx.py "$W/train/hf" "$OUTDIR/demo" --bits 4 --group 64 --router-bits 8
stage references
python3 scripts/demo/reference_hf.py --model "$OUTDIR/demo" --hf "$W/train/hf" --data "$W/data" \
    --train-json "$W/train/train.json" 2>&1 | tee "$OUTDIR/demo/training/reference.log"
stage done
