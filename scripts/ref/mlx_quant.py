"""MLX affine quantization (placeholder: dequantize for plain checkpoints only)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


def dequantize_checkpoint(raw, config):
    return {k: st_io.to_float32(*v) for k, v in raw.items()}
