#!/usr/bin/env bash
# t_synth.sh: flash-moe synth writes checkpoints in the layout mlx_lm.convert produces.
# The files are read back with an independent parser (Python's json/struct + numpy:
# safetensors header, shapes, dtypes, the MLX dequantization w = scale*q + bias), sharding
# is checked through the index, and the engine loads and runs the result.
set -u
BIN=${FM_BIN:-build/flash-moe}
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }

if "$BIN" synth "$T/q4" --preset tiny -q 4 --group 64 --seed 7 2>"$T/log"; then ok "synth tiny q4 g64"; else nok "synth tiny q4 g64"; cat "$T/log"; fi
"$BIN" synth "$T/bf" --preset tiny -q 0 --layers 3 --experts 4 2>/dev/null && ok "synth tiny bf16" || nok "synth tiny bf16"
"$BIN" synth "$T/sh" --preset tiny -q 8 --group 32 --shard-size 100K 2>/dev/null && ok "synth sharded q8 g32" || nok "synth sharded q8 g32"
"$BIN" synth "$T/x" --preset tiny -q 4 --group 128 2>/dev/null && nok "group 128 on 64-column experts refused" || ok "group 128 on 64-column experts refused"
"$BIN" synth "$T/qn" --preset qwen3-next-tiny -q 4 --seed 3 2>/dev/null && ok "synth qwen3-next-tiny q4" || nok "synth qwen3-next-tiny q4"
"$BIN" synth "$T/x" --preset nope 2>/dev/null && nok "unknown preset refused" || ok "unknown preset refused"

if [ ! -x "$PY" ] || ! "$PY" -c 'import numpy' 2>/dev/null; then
    nok "python3 with numpy missing at $PY"; exit 1
fi
"$PY" - "$T" <<'PYEOF'
import json, struct, sys, os
import numpy as np
T = sys.argv[1]
def ok(c, m): print(("ok - " if c else "not ok - ") + m)
def read_st(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        h = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in h.items():
            if k == '__metadata__': continue
            a, b = v['data_offsets']
            f.seek(base + a)
            raw = f.read(b - a)
            dt = {'U32': np.uint32, 'BF16': np.uint16}[v['dtype']]
            arr = np.frombuffer(raw, dtype=dt).reshape(v['shape'])
            out[k] = (v['dtype'], arr)
        size_ok = os.path.getsize(path) == base + max(v['data_offsets'][1] for k, v in h.items() if k != '__metadata__')
    return out, size_ok
def bf16(u): return (u.astype(np.uint32) << 16).view(np.float32)
def deq(w, s, b, bits, group):
    # MLX affine: little-endian bit stream per row, w = scale * q + bias per group
    rows = w.reshape(-1, w.shape[-1])
    bitsarr = np.unpackbits(rows.view(np.uint8), axis=1, bitorder='little')
    cols = bitsarr.shape[1] // bits
    q = bitsarr[:, :cols * bits].reshape(rows.shape[0], cols, bits)
    q = (q * (1 << np.arange(bits))).sum(axis=2)
    sc = np.repeat(bf16(s.reshape(rows.shape[0], -1)), group, axis=1)
    bi = np.repeat(bf16(b.reshape(rows.shape[0], -1)), group, axis=1)
    return sc * q + bi
cfg = json.load(open(f'{T}/q4/config.json'))
ok(cfg['quantization'] == {'group_size': 64, 'bits': 4} and cfg['quantization_config'] == cfg['quantization'], 'config has quantization and quantization_config')
ok(cfg['model_type'] == 'qwen3_moe' and cfg['num_experts'] == 8 and cfg['num_experts_per_tok'] == 2, 'config model_type and experts')
t, size_ok = read_st(f'{T}/q4/model.safetensors')
ok(size_ok, 'file size = header + data')
H, I, E, V = cfg['hidden_size'], cfg['moe_intermediate_size'], cfg['num_experts'], cfg['vocab_size']
exp = {
 'model.layers.1.mlp.switch_mlp.gate_proj.weight': ('U32', [E, I, H * 4 // 32]),
 'model.layers.1.mlp.switch_mlp.gate_proj.scales': ('BF16', [E, I, H // 64]),
 'model.layers.1.mlp.switch_mlp.down_proj.weight': ('U32', [E, H, I * 4 // 32]),
 'model.layers.1.mlp.switch_mlp.down_proj.biases': ('BF16', [E, H, I // 64]),
 'model.layers.0.mlp.gate.weight': ('U32', [E, H * 4 // 32]),
 'model.embed_tokens.weight': ('U32', [V, H * 4 // 32]),
 'lm_head.scales': ('BF16', [V, H // 64]),
 'model.layers.0.self_attn.q_proj.weight': ('U32', [cfg['num_attention_heads'] * cfg['head_dim'], H // 8]),
 'model.layers.0.self_attn.k_norm.weight': ('BF16', [cfg['head_dim']]),
 'model.norm.weight': ('BF16', [H]),
}
bad = [k for k, (d, s) in exp.items() if k not in t or t[k][0] != d or list(t[k][1].shape) != s]
ok(not bad, 'MLX names, dtypes and shapes (switch_mlp stacked experts) ' + ' '.join(bad))
w = deq(t['model.layers.1.mlp.switch_mlp.up_proj.weight'][1], t['model.layers.1.mlp.switch_mlp.up_proj.scales'][1],
        t['model.layers.1.mlp.switch_mlp.up_proj.biases'][1], 4, 64)
ok(0.015 < w.std() < 0.025 and abs(w.mean()) < 0.003, f'dequantized expert weights: std {w.std():.4f} mean {w.mean():.5f}')
ok(np.all(bf16(t['model.norm.weight'][1]) == 1.0), 'norm weights are 1')
tb, _ = read_st(f'{T}/bf/model.safetensors')
wb = bf16(tb['model.layers.2.mlp.switch_mlp.down_proj.weight'][1])
ok(tb['model.layers.2.mlp.switch_mlp.down_proj.weight'][1].shape == (4, H, I) and 0.015 < wb.std() < 0.025,
   f'bf16: stacked experts [4,{H},{I}], std {wb.std():.4f}')
idx = json.load(open(f'{T}/sh/model.safetensors.index.json'))
files = sorted(set(idx['weight_map'].values()))
allt = {}
for fn in files: allt.update(read_st(f'{T}/sh/{fn}')[0])
ok(len(files) > 1 and set(allt) == set(idx['weight_map']) and all(os.path.getsize(f'{T}/sh/{fn}') < 200000 for fn in files),
   f'sharded: {len(files)} files, index covers every tensor')
w8 = deq(allt['model.layers.0.self_attn.o_proj.weight'][1], allt['model.layers.0.self_attn.o_proj.scales'][1],
         allt['model.layers.0.self_attn.o_proj.biases'][1], 8, 32)
ok(0.015 < w8.std() < 0.025, f'q8 g32 dequantized std {w8.std():.4f}')
PYEOF
# qwen3-next-tiny: config keys and the hybrid MLX layout, read with the same parser
"$PY" - "$T" <<'PYEOF'
import json, struct, sys
import numpy as np
T = sys.argv[1]
def ok(c, m): print(("ok - " if c else "not ok - ") + m)
with open(f'{T}/qn/model.safetensors', 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    h = json.loads(f.read(n))
cfg = json.load(open(f'{T}/qn/config.json'))
want = {'model_type': 'qwen3_next', 'architectures': ['Qwen3NextForCausalLM'], 'hidden_size': 128,
        'num_hidden_layers': 4, 'linear_num_key_heads': 2, 'linear_num_value_heads': 4,
        'linear_key_head_dim': 32, 'linear_value_head_dim': 32, 'linear_conv_kernel_dim': 4,
        'full_attention_interval': 4, 'partial_rotary_factor': 0.25, 'shared_expert_intermediate_size': 64}
ok(all(cfg.get(k) == v for k, v in want.items()), 'qwen3-next-tiny config: ' + ' '.join(k for k, v in want.items() if cfg.get(k) != v))
H, KD, VD = 128, 2 * 32, 4 * 32
exp = {
 'model.layers.0.linear_attn.in_proj_qkvz.weight': ('U32', [2 * KD + 2 * VD, H // 8]),
 'model.layers.2.linear_attn.in_proj_ba.scales': ('BF16', [8, H // 64]),
 'model.layers.1.linear_attn.conv1d.weight': ('BF16', [2 * KD + VD, 4, 1]),
 'model.layers.0.linear_attn.A_log': ('BF16', [4]),
 'model.layers.0.linear_attn.dt_bias': ('BF16', [4]),
 'model.layers.0.linear_attn.norm.weight': ('BF16', [32]),
 'model.layers.0.linear_attn.out_proj.weight': ('U32', [H, VD // 8]),
 'model.layers.3.self_attn.q_proj.weight': ('U32', [2 * 4 * 32, H // 8]),
 'model.layers.3.self_attn.k_proj.weight': ('U32', [2 * 32, H // 8]),
 'model.layers.3.mlp.shared_expert.down_proj.weight': ('U32', [H, 64 // 8]),
 'model.layers.1.mlp.shared_expert_gate.weight': ('U32', [1, H // 8]),
 'model.layers.1.mlp.switch_mlp.up_proj.weight': ('U32', [8, 64, H // 8]),
}
bad = [k for k, (d, s) in exp.items() if k not in h or h[k]['dtype'] != d or h[k]['shape'] != s]
ok(not bad, 'qwen3-next-tiny: linear_attn / gated self_attn / shared expert names, dtypes, shapes ' + ' '.join(bad))
ok(not any(k.startswith('model.layers.0.self_attn') for k in h) and not any(k.startswith('model.layers.3.linear_attn') for k in h),
   'qwen3-next-tiny: layers 0-2 linear attention, layer 3 full attention')
PYEOF
# Internal check (no outside reference): prefill (chunked gated delta rule over 150 tokens,
# chunks of 64 plus a tail) and --decode (recurrent step) give the same logits.
ids=$(awk 'BEGIN {s = 7; for (i = 0; i < 150; i++) {s = (s * 1103515245 + 12345) % 2147483648; printf "%s%d", i ? "," : "", s % 512}}')
if "$BIN" eval "$T/qn" --tokens "$ids" -o "$T/qn.pre" --cache-dir "" >/dev/null 2>"$T/eval.log" &&
   "$BIN" eval "$T/qn" --tokens "$ids" -o "$T/qn.dec" --decode --cache-dir "" >/dev/null 2>>"$T/eval.log"; then
    "$PY" - "$T/qn.pre" "$T/qn.dec" <<'PYEOF'
import sys
import numpy as np
a, b = (np.fromfile(p, dtype=np.float32) for p in sys.argv[1:3])
e = np.linalg.norm(a - b) / np.linalg.norm(b) if a.size == b.size == 150 * 512 else float('inf')
print(("ok - " if np.isfinite(a).all() and a.std() > 0 and e <= 1e-4 else "not ok - ") +
      f"qwen3-next-tiny: prefill logits = --decode logits (150 tokens, rel err {e:.3g} <= 1e-4; internal check)")
PYEOF
else
    nok "engine runs the qwen3-next-tiny model"; tail -5 "$T/eval.log"
fi
for m in q4 bf sh; do
    if "$BIN" eval "$T/$m" --tokens 1,2,3,4 -o "$T/$m.logits" >/dev/null 2>"$T/eval.log" &&
       "$PY" -c "import numpy as np,sys; a=np.fromfile(sys.argv[1],dtype=np.float32); sys.exit(0 if a.size==4*512 and np.isfinite(a).all() and a.std()>0 else 1)" "$T/$m.logits"; then
        ok "engine loads and runs the $m model (finite logits)"
    else
        nok "engine loads and runs the $m model"; tail -5 "$T/eval.log"
    fi
done
