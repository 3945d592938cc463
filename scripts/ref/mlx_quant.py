"""MLX affine quantization, written the way mlx_lm.convert stores it.

Algorithm transcribed from MLX's CPU quantize kernel, repository ml-explore/mlx,
mlx/backend/cpu/quantized.cpp, `template <typename T, typename U> void quantize(...)`:
  per group of `group_size` consecutive input elements of a row:
    n_bins = 2^bits - 1, eps = 1e-7
    scale  = max((w_max - w_min) / n_bins, eps), negated unless |w_min| > |w_max|
    edge   = w_min if |w_min| > |w_max| else w_max
    q0     = rint(edge / scale); bias = 0; if q0 != 0: scale = edge / q0, bias = edge
    q      = clamp(rint((w - bias) / scale), 0, n_bins)
  scales and biases are stored in the weight's float type (BF16 here).
Packing (same file, `quantize` and `extract_bits`): element k of a pack goes to bit k*bits of a
little-endian integer; power-of-two bits fill uint32 words (32/bits elements per word), 3 and 5
bits fill 3- and 5-byte packs of 8 elements, 6 bits 3-byte packs of 4 elements. All of these are
the same thing: a row is one little-endian bit stream in which element j starts at bit j*bits,
so 3/5/6-bit values straddle byte and uint32 word boundaries. The safetensors tensor is U32
[..., in * bits / 32]; `scales`/`biases` are [..., in / group_size].
Dequantization (MLX `dequantize`, and `scale * q + bias` in _qmm_t): w = scale * q + bias,
evaluated here in float32 from the stored BF16 scale and bias.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


def quantize(w, bits, group_size):
    """w: float32 array [..., K] -> (packed uint32 [..., K*bits/32], scales f32 [..., K/gs],
    biases f32 [..., K/gs]) where scales/biases are already rounded to BF16, plus q (uint8)."""
    w = np.asarray(w, dtype=np.float32)
    K = w.shape[-1]
    assert K % group_size == 0 and (K * bits) % 32 == 0
    g = w.reshape(w.shape[:-1] + (K // group_size, group_size))
    n_bins = np.float32((1 << bits) - 1)
    eps = np.float32(1e-7)
    w_min = g.min(axis=-1)
    w_max = g.max(axis=-1)
    mask = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, eps).astype(np.float32)
    scale = np.where(mask, scale, -scale).astype(np.float32)
    edge = np.where(mask, w_min, w_max).astype(np.float32)
    q0 = np.rint(edge / scale).astype(np.float32)
    nz = q0 != 0
    scale = np.where(nz, edge / np.where(nz, q0, 1), scale).astype(np.float32)
    bias = np.where(nz, edge, 0).astype(np.float32)
    q = np.rint((g - bias[..., None]) / scale[..., None]).astype(np.float32)
    q = np.clip(q, 0, n_bins).astype(np.uint8).reshape(w.shape)
    packed = pack(q, bits)
    # stored as the weight dtype (BF16): static_cast<T>(scale)
    scale_bf = torch.from_numpy(scale).to(torch.bfloat16).to(torch.float32).numpy()
    bias_bf = torch.from_numpy(bias).to(torch.bfloat16).to(torch.float32).numpy()
    return packed, scale_bf, bias_bf, q


def pack(q, bits):
    """q: uint8 [..., K] -> uint32 [..., K*bits/32]; element j at bit j*bits of the row's
    little-endian bit stream."""
    K = q.shape[-1]
    b = ((q[..., :, None].astype(np.uint32) >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    b = b.reshape(q.shape[:-1] + (K * bits,))
    by = np.packbits(b, axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u4").reshape(q.shape[:-1] + (K * bits // 32,))


def unpack(packed, bits):
    """Inverse of pack: uint32 [..., W] -> uint8 [..., W*32/bits]."""
    packed = np.ascontiguousarray(packed, dtype="<u4")
    by = packed.view(np.uint8).reshape(packed.shape[:-1] + (packed.shape[-1] * 4,))
    b = np.unpackbits(by, axis=-1, bitorder="little")
    K = b.shape[-1] // bits
    b = b.reshape(b.shape[:-1] + (K, bits)).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint8)


def extract_bits_mlx(w_in, bits):
    """Direct transcription of MLX extract_bits (3/5/6 bits) for cross-checking unpack()."""
    w = [int(x) for x in w_in]
    if bits == 3:
        return [w[0] & 0x7, (w[0] & 0x38) >> 3, ((w[0] & 0xc0) >> 6) + ((w[1] & 0x1) << 2),
                (w[1] & 0xe) >> 1, (w[1] & 0x70) >> 4, ((w[1] & 0x80) >> 7) + ((w[2] & 0x3) << 1),
                (w[2] & 0x1c) >> 2, (w[2] & 0xe0) >> 5]
    if bits == 5:
        return [w[0] & 0x1f, ((w[0] & 0xe0) >> 5) + ((w[1] & 0x3) << 3), (w[1] & 0x7c) >> 2,
                ((w[1] & 0x80) >> 7) + ((w[2] & 0xf) << 1), ((w[2] & 0xf0) >> 4) + ((w[3] & 0x1) << 4),
                (w[3] & 0x3e) >> 1, ((w[3] & 0xc0) >> 6) + ((w[4] & 0x7) << 2), (w[4] & 0xf8) >> 3]
    if bits == 6:
        return [w[0] & 0x3f, ((w[0] >> 6) & 0x03) + ((w[1] & 0x0f) << 2),
                ((w[1] >> 4) & 0x0f) + ((w[2] & 0x03) << 4), (w[2] >> 2) & 0x3f]
    raise ValueError(bits)


def self_check():
    """unpack(pack(q)) == q for every bit width, and agrees with MLX's extract_bits / uint32
    shift order."""
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 5, 6, 8):
        q = rng.integers(0, 1 << bits, size=(3, 256)).astype(np.uint8)
        p = pack(q, bits)
        assert np.array_equal(unpack(p, bits), q), bits
        by = p.view(np.uint8).reshape(3, -1)
        if bits in (3, 5, 6):
            per, nb = (8, bits) if bits != 6 else (4, 3)
            for r in range(3):
                vals = []
                for s in range(0, by.shape[1], nb):
                    vals += extract_bits_mlx(by[r, s:s + nb], bits)
                assert vals == q[r].tolist(), bits
        else:
            per = 32 // bits
            for r in range(3):
                vals = [(int(p[r, k // per]) >> ((k % per) * bits)) & ((1 << bits) - 1) for k in range(256)]
                assert vals == q[r].tolist(), bits


def module_params(qcfg, path):
    """(bits, group_size) for module `path`: a per-module entry overrides the defaults."""
    o = qcfg.get(path)
    if isinstance(o, dict):
        return o["bits"], o["group_size"]
    return qcfg["bits"], qcfg["group_size"]


def quantize_state(sd, qcfg):
    """Quantize every linear/embedding weight (every 2-D/3-D `.weight` that is not a norm) of
    a float state dict. Returns (stored {name: (dtype, shape, bytes)}, dequantized {name: f32})."""
    stored, deq = {}, {}
    for name, t in sd.items():
        t32 = t.detach().to(torch.float32)
        if name.endswith(".weight") and t32.dim() >= 2 and "norm" not in name:
            path = name[: -len(".weight")]
            bits, gs = module_params(qcfg, path)
            w_bf = t32.to(torch.bfloat16).to(torch.float32).numpy()  # the BF16 model being converted
            packed, s, b, q = quantize(w_bf, bits, gs)
            stored[path + ".weight"] = ("U32", packed.shape, st_io.tensor_bytes(packed, "U32"))
            stored[path + ".scales"] = ("BF16", s.shape, st_io.tensor_bytes(torch.from_numpy(s), "BF16"))
            stored[path + ".biases"] = ("BF16", b.shape, st_io.tensor_bytes(torch.from_numpy(b), "BF16"))
            deq[name] = dequantize(packed, s, b, bits, gs)
        else:
            v = st_io.round_to(t32, "BF16")
            stored[name] = ("BF16", tuple(v.shape), st_io.tensor_bytes(v, "BF16"))
            deq[name] = v
    return stored, deq


def dequantize(packed, scales, biases, bits, group_size):
    """float32 torch tensor w = scale * q + bias."""
    q = unpack(packed, bits).astype(np.float32)
    K = q.shape[-1]
    g = q.reshape(q.shape[:-1] + (K // group_size, group_size))
    w = np.asarray(scales, np.float32)[..., None] * g + np.asarray(biases, np.float32)[..., None]
    return torch.from_numpy(w.reshape(q.shape).astype(np.float32))


def dequantize_checkpoint(raw, config):
    """{name: (dtype, shape, bytes)} of a (possibly) MLX-quantized checkpoint -> {name: f32}."""
    qcfg = config.get("quantization") or config.get("quantization_config")
    out = {}
    for name, (dt, shape, data) in raw.items():
        if name.endswith(".scales") or name.endswith(".biases"):
            continue
        path = name[: -len(".weight")] if name.endswith(".weight") else None
        if dt == "U32" and path is not None and (path + ".scales") in raw:
            bits, gs = module_params(qcfg, path)
            packed = np.frombuffer(data, dtype="<u4").reshape(shape)
            s = st_io.to_float32(*raw[path + ".scales"]).numpy()
            b = st_io.to_float32(*raw[path + ".biases"]).numpy()
            assert shape[-1] * 32 // bits == s.shape[-1] * gs, name
            out[name] = dequantize(packed, s, b, bits, gs)
        else:
            out[name] = st_io.to_float32(dt, shape, data)
    return out


if __name__ == "__main__":
    self_check()
    print("mlx_quant self-check ok")
