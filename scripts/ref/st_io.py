"""Minimal safetensors reader/writer (numpy/torch), independent of the engine.

Format (https://github.com/huggingface/safetensors, README "Format"):
  8 bytes  little-endian u64 N = length of the JSON header
  N bytes  JSON: {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}}
           offsets are relative to the start of the data section; the header is padded with
           spaces to a multiple of 8 bytes, as the Rust writer does.
  rest     the tensor bytes, little-endian, row-major.
BF16 is stored as the upper 16 bits of the float32 value (round-to-nearest-even, done by torch).
"""
import json
import os
import struct

import numpy as np
import torch

# dtype name -> (bytes per element)
DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "U8": 1, "I64": 8}


def tensor_bytes(t, dtype):
    """Return (bytes, dtype_name) of a torch tensor converted to `dtype` ("F32", "BF16", "F16", "U32")."""
    if dtype == "F32":
        return t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.detach().to(torch.float16).contiguous().numpy().astype("<f2").tobytes()
    if dtype == "BF16":
        b = t.detach().to(torch.float32).to(torch.bfloat16).contiguous().view(torch.int16)
        return b.numpy().astype("<i2").tobytes()
    if dtype == "U32":
        return np.ascontiguousarray(t, dtype="<u4").tobytes()
    raise ValueError(dtype)


def round_to(t, dtype):
    """Float32 tensor holding exactly the values that storing `t` as `dtype` keeps."""
    t = t.detach().to(torch.float32)
    if dtype == "F32":
        return t.clone()
    if dtype == "BF16":
        return t.to(torch.bfloat16).to(torch.float32)
    if dtype == "F16":
        return t.to(torch.float16).to(torch.float32)
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype_name, shape, raw_bytes). Writes in the given order."""
    header = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for name, dt, shape, raw in tensors:
        n = 1
        for s in shape:
            n *= s
        assert n * DTYPE_SIZE[dt] == len(raw), (name, dt, shape, len(raw))
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for _, _, _, raw in tensors:
            f.write(raw)


def read_safetensors(path):
    """Returns {name: (dtype_name, shape, raw_bytes)}."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), data[base + b:base + e])
    return out


def to_float32(dtype, shape, raw):
    """Decode a stored float tensor to a float32 torch tensor."""
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        a = u.view(np.float32)
    else:
        raise ValueError(dtype)
    return torch.from_numpy(a.copy()).reshape(shape)


def read_model_dir(d):
    """All tensors of a Hugging Face model dir (single file or sharded via index json)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    files = []
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fn in files:
        out.update(read_safetensors(os.path.join(d, fn)))
    return out
