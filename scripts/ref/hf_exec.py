#!/usr/bin/python3
"""Reference logits from Hugging Face transformers' own modeling code, run on this machine.

    /usr/bin/python3 scripts/ref/hf_exec.py --modeling DIR/modeling_<type>.py [--modeling ...]
        [--rope-utils DIR/modeling_rope_utils.py] [--commit TYPE=SHA] [--write] [--installed]
        [--model-dir MODEL_DIR | --demo] [FIXTURE_DIR ...]
    /usr/bin/python3 scripts/ref/hf_exec.py --modeling ... --model-dir MODEL_DIR --tokens 1,2,3
        [--greedy N] [--logits-out FILE]

transformers itself is not installed here (no PyPI), so this script takes the source file
src/transformers/models/<type>/modeling_<type>.py of huggingface/transformers (fetched by hand,
kept OUTSIDE this repository; see scripts/ref/README.md for the commit), installs small stand-in
modules for the transformers internals that file imports, and exec's the file as the package
module transformers.models.<type>.modeling_<type>. Every layer computation (norms, RoPE,
attention, gated DeltaNet chunked and recurrent rules, causal conv1d, routers, experts) is the
file's own code; the stand-ins only provide plumbing:
  - PreTrainedModel = nn.Module holding `config`, post_init() a no-op (weights come from the
    fixture); GenerationMixin / Generic*For* empty bases; GradientCheckpointingLayer = nn.Module;
  - decorators that only dispatch or document (auto_docstring, can_return_tuple,
    merge_with_config_defaults, capture_outputs, check_model_inputs, deprecate_kwarg,
    use_kernel_forward_from_hub, use_kernelized_func, use_experts_implementation,
    dynamic_rope_update) are the identity, i.e. the eager/default path;
  - ACT2FN["silu"] = torch.nn.SiLU(); ALL_ATTENTION_FUNCTIONS resolves only "eager" to the
    file's eager_attention_forward; fast-path probes (causal_conv1d, fla) report unavailable;
  - create_causal_mask: the eager 4-D float mask of transformers' masking_utils.eager_mask,
    0 where kv_index <= query position, finfo(float32).min elsewhere;
  - DynamicCache: per-layer K/V concatenated on the sequence axis (DynamicLayer.update), and
    for linear-attention layers conv_states / recurrent_states with has_previous_state,
    update_conv_state, update_recurrent_state (LinearAttentionLayer); get_seq_length counts
    the tokens held by the first attention layer;
  - RoPE: files that take the default inverse frequencies from modeling_rope_utils get
    transformers' own _compute_default_rope_parameters from --rope-utils (exec'd as is);
    extract_rope_scaling_dict_from_config (config plumbing) returns {"rope_type": "default",
    "rope_theta": config.rope_theta};
  - the config: config.json values plus the defaults of transformers' configuration class for
    the keys the forward reads (rope_parameters / rope_theta, layer_types, mlp_only_layers,
    sliding_window, _attn_implementation = "eager").
torch shims: none were needed with Debian's torch 1.13 for the files listed in README.md.
Weights: the fixture's stored values in float32 (BF16/F16 upcast, MLX affine weights
dequantized by mlx_quant.py; MLX qwen3_next layout converted back by gen_qwen3_next.from_mlx:
norms stored as 1 + w, conv1d [C, K, 1], switch_mlp stacks), renamed/fused the way
transformers 5's conversion_mapping.py does when the file uses fused 3-D experts
(mlp.experts.gate_up_proj = cat(gate, up) per expert; Mixtral w1/w3 -> gate_up, w2 -> down,
block_sparse_moe.gate -> mlp.gate).

--installed imports the real `transformers` package instead (no stand-ins), for the machine
where it is installed; the weights are loaded the same way.

For each fixture it prints the relative L2 error ||old - new|| / ||new|| of the committed
logits.f32 against (a) the prefill of all tokens and (b) token-by-token decode through the
cache, plus argmax agreement. --write rewrites logits.f32 with the prefill logits and records
the provenance in ref.json (token ids and weights are never touched).

--model-dir MODEL_DIR (--demo = models/demo) checks a model directory's stored references in
MODEL_DIR/ref/: the logits of ref.json's tokens against logits.f32 (prefill and decode, argmax
also against ref.json's "argmax"), and greedy.json's "ids" against transformers' greedy argmax
loop from "prompt_ids" (up to "max_new_tokens", stopping after a "stop_ids" token), run twice:
through the KV cache and by full recompute without a cache; the stored "text" / "prompt_text"
must equal the ids decoded with tokenizer.json's byte-level table. --write then records the
provenance ("source", "hf_reference") in ref.json and greedy.json; it never rewrites the
expected values (logits.f32, ids, text). With --tokens it only prints transformers' argmax
for the given ids (and --greedy N tokens), optionally writing the logits to --logits-out.
"""
import argparse
import importlib
import json
import logging
import math
import os
import re
import sys
import types

sys.dont_write_bytecode = True
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mlx_quant  # noqa: E402
import st_io  # noqa: E402

# --------------------------------------------------------------------------------------------
# Stand-in modules for transformers internals


def _identity_decorator(*args, **kwargs):
    """Usable bare (@dec) or called (@dec(...)): returns the decorated object unchanged."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    return lambda f: f


def _factory_decorator(*args, **kwargs):
    """A decorator factory (@dec(arg)) whose decorator returns its argument unchanged."""
    return lambda f: f


class _Subscriptable:
    """Stands for typing helpers such as Unpack[...] and TypedDict kwargs classes."""

    def __class_getitem__(cls, item):
        return cls


class _Logger:
    def __init__(self, name):
        self._log = logging.getLogger(name)
        self._seen = set()

    def warning_once(self, msg, *a):
        if msg not in self._seen:
            self._seen.add(msg)
            self._log.info(msg, *a)

    def __getattr__(self, name):
        return getattr(self._log, name)


class ModelOutput(dict):
    """Attribute access to the fields given; absent fields read as None."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __getitem__(self, k):
        if isinstance(k, int):
            return [v for v in self.values() if v is not None][k]
        return dict.__getitem__(self, k)

    def to_tuple(self):
        return tuple(v for v in self.values() if v is not None)


class PreTrainedModel(nn.Module):
    """nn.Module holding the config; no weight init, no hub logic."""

    config_class = None
    base_model_prefix = "model"

    def __init__(self, config, *args, **kwargs):
        super().__init__()
        self.config = config

    def post_init(self):
        pass

    def _init_weights(self, module):
        pass


class _AttentionFunctions:
    """ALL_ATTENTION_FUNCTIONS: only the eager path (the modeling file's own function)."""

    def get_interface(self, impl, default):
        if impl != "eager":
            raise NotImplementedError("attention implementation %r" % impl)
        return default

    def __getitem__(self, impl):
        raise NotImplementedError("attention implementation %r" % impl)

    def __contains__(self, impl):
        return False


class _LinearLayerCache:
    """Linear-attention layer state (transformers' LinearAttentionLayer)."""

    def __init__(self):
        self.conv_states = None
        self.recurrent_states = None
        self.has_previous_state = False

    def get_seq_length(self):
        return 0


class _AttentionLayerCache:
    """DynamicLayer: keys/values [batch, heads, seq, head_dim] grown by concatenation."""

    def __init__(self):
        self.keys = None
        self.values = None

    def update(self, k, v):
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = torch.cat([self.keys, k], dim=-2)
            self.values = torch.cat([self.values, v], dim=-2)
        return self.keys, self.values

    def get_seq_length(self):
        return 0 if self.keys is None else self.keys.shape[-2]


class Cache:
    pass


class StaticCache(Cache):
    """Only used in isinstance() checks: never instantiated here."""


class DynamicCache(Cache):
    """Container of per-layer caches. DynamicCache() grows attention layers on demand;
    DynamicCache(config=...) lays out linear-attention layers from config.layer_types."""

    def __init__(self, *args, config=None, **kwargs):
        self.layers = []
        if config is not None and getattr(config, "layer_types", None) is not None:
            for t in config.layer_types:
                self.layers.append(_LinearLayerCache() if t == "linear_attention" else _AttentionLayerCache())

    def _layer(self, idx):
        while len(self.layers) <= idx:
            self.layers.append(_AttentionLayerCache())
        return self.layers[idx]

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return self._layer(layer_idx).update(key_states, value_states)

    def get_seq_length(self, layer_idx=None):
        att = [l for l in self.layers if isinstance(l, _AttentionLayerCache)]
        if layer_idx is not None and layer_idx < len(self.layers) and isinstance(self.layers[layer_idx], _AttentionLayerCache):
            return self.layers[layer_idx].get_seq_length()
        return att[0].get_seq_length() if att else 0

    def has_previous_state(self, layer_idx=None):
        if layer_idx is None:
            lin = [l for l in self.layers if isinstance(l, _LinearLayerCache)]
            return bool(lin) and lin[-1].has_previous_state
        return self.layers[layer_idx].has_previous_state

    def update_conv_state(self, conv_states, layer_idx, **kwargs):
        layer = self.layers[layer_idx]
        layer.conv_states = conv_states
        return layer.conv_states

    def update_recurrent_state(self, recurrent_states, layer_idx, **kwargs):
        layer = self.layers[layer_idx]
        layer.recurrent_states = recurrent_states
        layer.has_previous_state = True
        return layer.recurrent_states


def create_causal_mask(config=None, inputs_embeds=None, attention_mask=None, cache_position=None,
                       past_key_values=None, position_ids=None, input_embeds=None, **kwargs):
    """masking_utils.create_causal_mask for the eager path and no padding: float
    [batch, 1, q, kv] with 0 where kv_idx <= q position, finfo(dtype).min elsewhere."""
    x = inputs_embeds if inputs_embeds is not None else input_embeds
    assert attention_mask is None, "padding masks are not supported here"
    b, q = x.shape[0], x.shape[1]
    past = past_key_values.get_seq_length() if past_key_values is not None else 0
    if cache_position is None:
        cache_position = torch.arange(past, past + q)
    kv = past + q
    allowed = torch.arange(kv)[None, :] <= cache_position.reshape(-1, 1)
    min_dtype = torch.finfo(x.dtype).min
    m = torch.where(allowed, torch.tensor(0.0, dtype=x.dtype), torch.tensor(min_dtype, dtype=x.dtype))
    return m[None, None].expand(b, 1, q, kv)


def create_sliding_window_causal_mask(config=None, **kwargs):
    """Only reached for configs without sliding layers (the mask is built but unused)."""
    if getattr(config, "sliding_window", None) is not None:
        raise NotImplementedError("sliding-window attention is not supported here")
    return None


def extract_rope_scaling_dict_from_config(config, layer_type=None, **kwargs):
    rs = getattr(config, "rope_scaling", None) or {}
    d = {"rope_type": rs.get("rope_type", rs.get("type", "default")), "rope_theta": config.rope_theta}
    assert d["rope_type"] == "default"
    return d


def _maybe_autocast(device_type="cpu", enabled=True, **kwargs):
    return torch.autocast(device_type=device_type, enabled=enabled, **kwargs)


STUB_NAMES = []  # names of the stand-in modules, for the report
ROPE_UTILS_USED = [False]  # set when the model built last called it
ROPE_INIT_FUNCTIONS = {}  # filled from transformers' modeling_rope_utils.py (--rope-utils), when a file needs it


def load_rope_utils(path):
    """ROPE_INIT_FUNCTIONS["default"] = transformers' _compute_default_rope_parameters, taken from
    its modeling_rope_utils.py (whole file or an excerpt holding the function) and exec'd as is."""
    import ast
    from typing import Dict, Optional, Tuple  # noqa: F401  (names its annotations use)
    with open(path, encoding="utf-8") as f:
        src = f.read()
    tree = ast.parse(src)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_compute_default_rope_parameters"]
    assert fn, "no _compute_default_rope_parameters in " + path
    ns = {"torch": torch, "math": math, "Optional": Optional, "Tuple": Tuple, "Dict": Dict,
          "PretrainedConfig": StubConfig, "PreTrainedConfig": StubConfig}
    exec(compile(ast.Module(body=fn, type_ignores=[]), path, "exec"), ns)
    fn_default = ns["_compute_default_rope_parameters"]

    def default(*a, **k):
        ROPE_UTILS_USED[0] = True
        return fn_default(*a, **k)
    ROPE_INIT_FUNCTIONS["default"] = default


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    if name.count(".") == 0 or name.endswith((".models", ".utils")) or attrs.get("__path__") is not None:
        m.__path__ = []
    sys.modules[name] = m
    STUB_NAMES.append(name)
    return m


def install_stubs():
    """Put the stand-in transformers package into sys.modules."""
    for k in [k for k in sys.modules if k == "transformers" or k.startswith("transformers.")]:
        del sys.modules[k]
    STUB_NAMES.clear()
    T = "transformers"
    _module(T)
    _module(T + ".models")
    _module(T + ".initialization")
    _module(T + ".activations", ACT2FN={"silu": nn.SiLU(), "swish": nn.SiLU()})
    _module(T + ".cache_utils", Cache=Cache, DynamicCache=DynamicCache, StaticCache=StaticCache)
    _module(T + ".modeling_attn_mask_utils", AttentionMaskConverter=type("AttentionMaskConverter", (), {}))
    _module(T + ".generation", GenerationMixin=type("GenerationMixin", (), {}))
    _module(T + ".integrations", use_experts_implementation=_identity_decorator,
            use_kernelized_func=_factory_decorator, use_kernel_forward_from_hub=_factory_decorator,
            use_kernel_func_from_hub=_factory_decorator)
    _module(T + ".masking_utils", create_causal_mask=create_causal_mask,
            create_sliding_window_causal_mask=create_sliding_window_causal_mask)
    _module(T + ".modeling_flash_attention_utils", FlashAttentionKwargs=_Subscriptable,
            is_flash_attn_available=lambda: False, flash_attn_supports_top_left_mask=lambda: False)
    _module(T + ".modeling_layers", GradientCheckpointingLayer=nn.Module,
            GenericForQuestionAnswering=type("GenericForQuestionAnswering", (), {}),
            GenericForSequenceClassification=type("GenericForSequenceClassification", (), {}),
            GenericForTokenClassification=type("GenericForTokenClassification", (), {}))
    _module(T + ".modeling_outputs", MoeCausalLMOutputWithPast=ModelOutput, MoeModelOutputWithPast=ModelOutput,
            BaseModelOutputWithPast=ModelOutput, CausalLMOutputWithPast=ModelOutput)
    _module(T + ".modeling_rope_utils", ROPE_INIT_FUNCTIONS=ROPE_INIT_FUNCTIONS, dynamic_rope_update=_identity_decorator,
            extract_rope_scaling_dict_from_config=extract_rope_scaling_dict_from_config,
            RopeParameters=dict)
    _module(T + ".modeling_utils", ALL_ATTENTION_FUNCTIONS=_AttentionFunctions(), PreTrainedModel=PreTrainedModel)
    _module(T + ".processing_utils", Unpack=_Subscriptable)
    _module(T + ".utils", TransformersKwargs=_Subscriptable, auto_docstring=_identity_decorator,
            can_return_tuple=_identity_decorator, add_start_docstrings=_identity_decorator,
            add_start_docstrings_to_model_forward=_identity_decorator,
            replace_return_docstrings=_identity_decorator,
            logging=types.SimpleNamespace(get_logger=_Logger), is_torch_flex_attn_available=lambda: False,
            is_torchdynamo_compiling=lambda: False)
    _module(T + ".utils.generic", maybe_autocast=_maybe_autocast, merge_with_config_defaults=_identity_decorator,
            check_model_inputs=_identity_decorator, OutputRecorder=lambda *a, **k: None,
            can_return_tuple=_identity_decorator)
    _module(T + ".utils.import_utils", is_causal_conv1d_available=lambda: False,
            is_flash_linear_attention_available=lambda: False)
    _module(T + ".utils.output_capturing", OutputRecorder=lambda *a, **k: None, capture_outputs=_identity_decorator)
    _module(T + ".utils.deprecation", deprecate_kwarg=_factory_decorator)


# --------------------------------------------------------------------------------------------
# Config


class StubConfig:
    """config.json values as attributes, with the defaults of transformers' configuration
    classes for the keys the forward pass reads."""

    def __init__(self, d):
        self.__dict__.update(d)

    def __getattr__(self, name):  # keys absent from config.json and without a default
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError("config has no %r (add its transformers default to make_config)" % name)


def make_config(d):
    """Build the config object the modeling file expects from a config.json dict."""
    d = dict(d)
    mt = d["model_type"]
    defaults = {
        "attention_dropout": 0.0, "pad_token_id": None, "output_router_logits": False,
        "router_aux_loss_coef": 0.001, "use_cache": True, "dtype": None, "torch_dtype": None,
        "tie_word_embeddings": False, "rope_scaling": None, "attention_bias": False,
        "initializer_range": 0.02, "hidden_act": "silu", "output_attentions": False,
        "output_hidden_states": False, "use_return_dict": True, "router_jitter_noise": 0.0,
    }
    for k, v in defaults.items():
        d.setdefault(k, v)
    # RoPE: both spellings (top-level rope_theta, transformers 5's rope_parameters)
    rp = dict(d.get("rope_parameters") or {})
    if "rope_theta" not in d:
        d["rope_theta"] = rp["rope_theta"]
    rp.setdefault("rope_theta", d["rope_theta"])
    rp.setdefault("rope_type", "default")
    if mt == "qwen3_next":
        # Qwen3NextConfig.__post_init__: partial_rotary_factor defaults to 0.25 and is folded
        # into rope_parameters; layer_types from full_attention_interval (default 4)
        rp.setdefault("partial_rotary_factor", d.get("partial_rotary_factor", 0.25))
        d.setdefault("partial_rotary_factor", rp["partial_rotary_factor"])
        if not d.get("layer_types"):
            interval = d.get("full_attention_interval", 4)
            d["layer_types"] = ["linear_attention" if bool((i + 1) % interval) else "full_attention"
                                for i in range(d["num_hidden_layers"])]
    d["rope_parameters"] = rp
    if mt in ("qwen3_next", "qwen3_moe", "qwen2_moe"):
        d["mlp_only_layers"] = d.get("mlp_only_layers") or []
        d.setdefault("decoder_sparse_step", 1)
        d.setdefault("norm_topk_prob", mt == "qwen3_next")
    if mt in ("qwen3_moe", "qwen2_moe"):
        # Qwen2Moe/Qwen3MoeConfig: sliding_window only when use_sliding_window
        if not d.get("use_sliding_window", False):
            d["sliding_window"] = None
        d.setdefault("qkv_bias", True)  # qwen2_moe: q/k/v projections always carry a bias
        d.setdefault("max_window_layers", d["num_hidden_layers"])
        if not d.get("layer_types"):
            d["layer_types"] = ["sliding_attention" if d["sliding_window"] is not None and i >= d["max_window_layers"]
                                else "full_attention" for i in range(d["num_hidden_layers"])]
    if mt == "mixtral":
        d.setdefault("sliding_window", None)
        d.setdefault("num_local_experts", d.get("num_experts"))
        d.setdefault("num_experts", d["num_local_experts"])
    if mt == "olmoe":
        d.setdefault("clip_qkv", None)
        d.setdefault("norm_topk_prob", False)
    if "head_dim" not in d and mt != "olmoe":
        d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
    d["_attn_implementation"] = "eager"
    d["_experts_implementation"] = "eager"
    return StubConfig(d)


# --------------------------------------------------------------------------------------------
# Loading transformers' modeling file


def load_modeling(path, model_type):
    """exec transformers' modeling_<type>.py as transformers.models.<type>.modeling_<type>."""
    pkg = "transformers.models." + model_type
    _module(pkg, __path__=[])
    cfg_mod = _module(pkg + ".configuration_" + model_type)
    cls_prefix = {"qwen3_next": "Qwen3Next", "qwen3_moe": "Qwen3Moe", "qwen2_moe": "Qwen2Moe",
                  "mixtral": "Mixtral", "olmoe": "Olmoe"}[model_type]
    setattr(cfg_mod, cls_prefix + "Config", StubConfig)
    name = pkg + ".modeling_" + model_type
    with open(path, encoding="utf-8") as f:
        src = f.read()
    mod = types.ModuleType(name)
    mod.__file__ = path
    mod.__package__ = pkg
    sys.modules[name] = mod
    exec(compile(src, path, "exec"), mod.__dict__)
    return getattr(mod, cls_prefix + "ForCausalLM")


def load_installed(model_type):
    """The real transformers package's ForCausalLM class and config class. For qwen3_next the
    optional CUDA kernels (causal_conv1d, fla), if installed, are switched off so that the file's
    torch path runs (the same code the stand-in mode executes), on the CPU in float32."""
    try:
        import transformers  # noqa: F401  (only checks that it is importable)
    except ImportError as e:
        sys.exit("--installed: transformers is not importable here (%s)" % e)
    cls_prefix = {"qwen3_next": "Qwen3Next", "qwen3_moe": "Qwen3Moe", "qwen2_moe": "Qwen2Moe",
                  "mixtral": "Mixtral", "olmoe": "Olmoe"}[model_type]
    mod = importlib.import_module("transformers.models.%s.modeling_%s" % (model_type, model_type))
    cfg_mod = importlib.import_module("transformers.models.%s.configuration_%s" % (model_type, model_type))
    for name in list(vars(mod)):
        # transformers >= 5.15 wraps the file's torch functions in
        # use_kernel_func_from_hub_with_fallback (hub kernel, else the package, else torch):
        # take the torch function itself
        f = getattr(mod, name)
        if (("conv1d" in name or "delta_rule" in name) and callable(f) and hasattr(f, "__wrapped__")
                and getattr(f, "__module__", "") == mod.__name__):
            setattr(mod, name, f.__wrapped__)
    for name in ("causal_conv1d_fn", "causal_conv1d_update", "chunk_gated_delta_rule",
                 "fused_recurrent_gated_delta_rule", "FusedRMSNormGated"):
        f = getattr(mod, name, None)
        if f is not None and getattr(f, "__module__", "") != mod.__name__:
            print("note: %s found; using the torch path instead" % name)
            setattr(mod, name, None)
    if hasattr(mod, "is_fast_path_available"):
        mod.is_fast_path_available = False
    return getattr(mod, cls_prefix + "ForCausalLM"), getattr(cfg_mod, cls_prefix + "Config"), mod.__file__


# --------------------------------------------------------------------------------------------
# Weights


def fixture_tensors(d, cfg):
    """{name: float32 tensor} in the Hugging Face checkpoint naming (per-expert tensors,
    zero-centred qwen3_next norms, conv1d [C, 1, K])."""
    raw = st_io.read_model_dir(d)
    if cfg.get("quantization") or cfg.get("quantization_config"):
        t = mlx_quant.dequantize_checkpoint(raw, cfg)
    else:
        t = {k: st_io.to_float32(*v) for k, v in raw.items()}
    if not any(".switch_mlp." in k for k in t):
        return t
    if cfg["model_type"] == "qwen3_next":
        import gen_qwen3_next  # MLX sanitize rules, inverted
        return gen_qwen3_next.from_mlx(t, cfg)
    out = {}
    for name, v in t.items():
        if ".switch_mlp." in name:
            pre, post = name.split(".switch_mlp.")
            proj = post.split(".")[0]
            if cfg["model_type"] == "mixtral":
                proj = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}[proj]
                pre = pre.replace(".mlp", ".block_sparse_moe")
            for e in range(v.shape[0]):
                out["%s.experts.%d.%s.weight" % (pre, e, proj)] = v[e].clone()
        else:
            out[name] = v
    return out


def to_model_keys(t, model, model_type):
    """Rename/fuse checkpoint tensors into the model's parameter names, as transformers 5's
    conversion_mapping.py does (qwen2_moe family: MergeModulelist(dim=0) + Concatenate(dim=1)
    of gate_proj/up_proj into mlp.experts.gate_up_proj, down_proj merged; mixtral: w1/w3 ->
    gate_up_proj, w2 -> down_proj, block_sparse_moe.gate -> mlp.gate)."""
    want = set(model.state_dict().keys())
    t = dict(t)
    if any(k.endswith("experts.gate_up_proj") for k in want):
        if model_type == "mixtral":
            t = {k.replace(".block_sparse_moe.gate.", ".mlp.gate.").replace(".block_sparse_moe.experts.", ".mlp.experts."): v
                 for k, v in t.items()}
            gname, uname, dname = "w1", "w3", "w2"
        else:
            gname, uname, dname = "gate_proj", "up_proj", "down_proj"
        for key in sorted(k for k in want if k.endswith("mlp.experts.gate_up_proj")):
            pre = key[: -len("gate_up_proj")]
            n = 0
            while "%s%d.%s.weight" % (pre, n, gname) in t:
                n += 1
            g = torch.stack([t.pop("%s%d.%s.weight" % (pre, e, gname)) for e in range(n)])
            u = torch.stack([t.pop("%s%d.%s.weight" % (pre, e, uname)) for e in range(n)])
            dn = torch.stack([t.pop("%s%d.%s.weight" % (pre, e, dname)) for e in range(n)])
            t[key] = torch.cat([g, u], dim=1)
            t[pre + "down_proj"] = dn
    if "lm_head.weight" in want and "lm_head.weight" not in t:
        t["lm_head.weight"] = t["model.embed_tokens.weight"]  # tie_word_embeddings
    return t


def torch_path_only(model):
    """Linear-attention layers of an installed transformers may bind optional CUDA kernels
    (causal_conv1d, fla) per instance; rebind them to the file's own torch_<name> function
    where it has one (torch_causal_conv1d_update, torch_chunk_gated_delta_rule, ...), else to
    None (the file then takes its torch path, e.g. nn.Conv1d for causal_conv1d_fn)."""
    mod = sys.modules.get(type(model).__module__)
    for m in model.modules():
        for attr in ("causal_conv1d_fn", "causal_conv1d_update", "chunk_gated_delta_rule",
                     "recurrent_gated_delta_rule"):
            cur = getattr(m, attr, None)
            if cur is None:
                continue
            if hasattr(cur, "__wrapped__"):  # hub/package dispatch around a torch function
                setattr(m, attr, cur.__wrapped__)
                continue
            if getattr(cur, "__module__", "") == getattr(mod, "__name__", None):
                continue  # the file's own function
            setattr(m, attr, getattr(mod, "torch_" + attr, None) if mod is not None else None)


def build_model(cls, config, fixture_dir, cfg_json, model_type):
    torch.manual_seed(0)  # A_log's constructor draws random numbers; overwritten below
    model = cls(config)
    torch_path_only(model)
    t = to_model_keys(fixture_tensors(fixture_dir, cfg_json), model, model_type)
    missing, unexpected = model.load_state_dict(t, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.eval()
    return model.float()


# --------------------------------------------------------------------------------------------
# Runs


@torch.no_grad()
def prefill(model, tokens):
    out = model(input_ids=torch.tensor([tokens]), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def decode(model, tokens, config):
    cache = None
    rows = []
    for tok in tokens:
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0, -1].float())
    return torch.stack(rows)


@torch.no_grad()
def split_run(model, tokens, k):
    """Prefill of tokens[:k] (kept in the cache), then tokens[k:] one at a time: the logits of all
    positions, so a prompt's cached state can be checked against one prefill."""
    out = model(input_ids=torch.tensor([tokens[:k]]), use_cache=True)
    rows = [out.logits[0].float()]
    cache = out.past_key_values
    for tok in tokens[k:]:
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0, -1:].float())
    return torch.cat(rows)


def rel(a, b):
    return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))


def _sha_of(path):
    """The commit sha a fetched file is filed under (its directory name), or None."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent if re.fullmatch(r"[0-9a-f]{40}", parent) else None


def type_of_path(p):
    m = re.search(r"modeling_(\w+)\.py$", p)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# A model directory with stored references (models/demo): logits of a fixed prompt and greedy ids


@torch.no_grad()
def greedy_cached(model, prompt, n, stops):
    """Plain argmax loop through the KV cache: prefill the prompt, then one token at a time.
    Returns (ids, min top-1/top-2 logit margin along the path). Stops after a stop id."""
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    cache = out.past_key_values
    ids, margin = [], float("inf")
    for _ in range(n):
        last = out.logits[0, -1].float()
        top2 = last.topk(2).values
        margin = min(margin, float(top2[0] - top2[1]))
        tok = int(last.argmax())
        ids.append(tok)
        if tok in stops:
            break
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
    return ids, margin


@torch.no_grad()
def greedy_recompute(model, prompt, n, stops):
    """The same argmax loop without a cache: every step runs the whole sequence from position 0."""
    seq, ids = list(prompt), []
    for _ in range(n):
        tok = int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
        ids.append(tok)
        seq.append(tok)
        if tok in stops:
            break
    return ids


def byte_level_decoder(model_dir):
    """ids -> text for a byte-level BPE tokenizer.json (GPT-2 bytes_to_unicode table; added
    tokens verbatim), used to check that stored ids and stored text agree."""
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    u2b = {chr(c): b for b, c in zip(bs, cs)}
    inv = {i: t for t, i in tj["model"]["vocab"].items()}
    added = {a["id"]: a["content"] for a in tj.get("added_tokens", [])}

    def dec(ids):
        out, buf = [], bytearray()
        for i in ids:
            if i in added:
                out.append(buf.decode("utf-8", "replace"))
                buf = bytearray()
                out.append(added[i])
            else:
                buf += bytes(u2b[ch] for ch in inv[i])
        out.append(buf.decode("utf-8", "replace"))
        return "".join(out)
    return dec


def _dump_json(path, obj, like_text):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        if like_text.endswith("\n"):
            f.write("\n")


def check_model_dir(md, args, sources, commits, classes):
    """Checks (and with --write records provenance in) MODEL_DIR/ref/: logits of ref.json's
    tokens against logits.f32, and greedy.json's ids against transformers' argmax loop, with
    the KV cache and with full recompute. With --tokens, only prints transformers' argmax
    (and --greedy N continuation) of those ids, optionally writing --logits-out. Stored
    expected values (logits.f32, ids, text) are never rewritten. Returns the failure count."""
    with open(os.path.join(md, "config.json")) as f:
        cfg_json = json.load(f)
    mt = cfg_json["model_type"]
    got = model_class(mt, cfg_json, args, sources, commits, classes)
    if got is None:
        print("%s: no --modeling file for %s" % (md, mt))
        return 1
    cls, config, origin = got
    model = build_model(cls, config, md, cfg_json, mt)
    root = os.path.realpath(os.path.join(HERE, "..", ".."))
    name = os.path.realpath(md)
    name = os.path.relpath(name, root) if name.startswith(root + os.sep) else os.path.normpath(md)
    stops = cfg_json.get("eos_token_id")
    stops = stops if isinstance(stops, list) else [stops]
    if args.tokens is not None:
        tokens = [int(x) for x in args.tokens.replace(",", " ").split()]
        pre = prefill(model, tokens)
        print("%s: %d tokens, argmax %s" % (name, len(tokens), pre.argmax(-1).tolist()))
        if args.logits_out:
            pre.numpy().astype("<f4").tofile(args.logits_out)
        if args.greedy:
            ids, margin = greedy_cached(model, tokens, args.greedy, stops)
            print("%s: greedy %s (min top-1/top-2 margin %.4g)" % (name, ids, margin))
        return 0
    refdir = os.path.join(md, "ref")
    failures = 0
    src = origin + "; PyTorch %s, float32 on the stored weights, eager attention" % torch.__version__
    hf = {"repo": "huggingface/transformers", "commit": commits.get(mt) if not args.installed else None,
          "file": "src/transformers/models/%s/modeling_%s.py" % (mt, mt), "torch": torch.__version__}
    if args.installed:
        import transformers
        hf["transformers_version"] = transformers.__version__
        hf["command"] = "/usr/bin/python3 scripts/ref/hf_exec.py --installed --model-dir %s --write" % name
    else:
        hf["command"] = ("/usr/bin/python3 scripts/ref/hf_exec.py --modeling <huggingface/transformers at "
                         "the commit>/%s --model-dir %s --write" % (hf["file"], name))

    # logits of the fixed prompt
    with open(os.path.join(refdir, "ref.json")) as f:
        ref_text = f.read()
    ref = json.loads(ref_text)
    tokens = ref["tokens"]
    pre = prefill(model, tokens)
    dec = decode(model, tokens, config)
    old = torch.from_numpy(np.fromfile(os.path.join(refdir, "logits.f32"), dtype="<f4").copy())
    shape_ok = old.numel() == pre.numel()
    old = old.reshape(pre.shape) if shape_ok else old
    e_old = rel(old, pre) if shape_ok else float("inf")
    e_dec = rel(dec, pre)
    same = shape_ok and bool(torch.equal(old.argmax(-1), pre.argmax(-1))) and \
        bool(torch.equal(dec.argmax(-1), pre.argmax(-1))) and pre.argmax(-1).tolist() == ref.get("argmax", pre.argmax(-1).tolist())
    bitwise = shape_ok and bool(torch.equal(old, pre))
    print("%s logits (%d tokens): stored-vs-hf %.3e%s  decode-vs-prefill %.3e  argmax %s"
          % (name, len(tokens), e_old, " (bitwise equal)" if bitwise else "", e_dec, "same" if same else "DIFFERENT"))
    logits_ok = e_old <= args.tol and e_dec <= args.dec_tol and same
    failures += 0 if logits_ok else 1

    # greedy completion
    gpath = os.path.join(refdir, "greedy.json")
    g_text = None
    if os.path.exists(gpath):
        with open(gpath) as f:
            g_text = f.read()
        g = json.loads(g_text)
        gstops = g.get("stop_ids", stops)
        a, margin = greedy_cached(model, g["prompt_ids"], g["max_new_tokens"], gstops)
        b = greedy_recompute(model, g["prompt_ids"], g["max_new_tokens"], gstops)
        dec_text = byte_level_decoder(md)
        text_ok = dec_text(g["ids"]) == g["text"] and dec_text(g["prompt_ids"]) == g["prompt_text"]
        print("%s greedy (%d prompt ids): kv-cache %d ids %s, full recompute %s, stored text %s ids; "
              "min top-1/top-2 margin %.4g"
              % (name, len(g["prompt_ids"]), len(a), "EQUAL to greedy.json" if a == g["ids"] else "DIFFERENT",
                 "EQUAL" if b == g["ids"] else "DIFFERENT", "matches" if text_ok else "DOES NOT MATCH", margin))
        for label, got_ids in (("kv-cache", a), ("recompute", b)):
            if got_ids != g["ids"]:
                k = next((i for i, (x, y) in enumerate(zip(got_ids, g["ids"])) if x != y), min(len(got_ids), len(g["ids"])))
                print("  %s first differs at %d: hf %s stored %s" % (label, k, got_ids[k:k + 5], g["ids"][k:k + 5]))
        greedy_ok = a == g["ids"] and b == g["ids"] and text_ok
        failures += 0 if greedy_ok else 1
    if args.write and failures == 0:
        prev = (ref.get("hf_reference") or {}).get("previous_source") or ref.get("source")
        ref["source"] = src + ", prefill of all tokens; ids from @lenml/tokenizers"
        ref["hf_reference"] = dict(hf, **{
            "stored_vs_hf_rel_err": float("%.3e" % e_old), "bitwise_equal": bitwise,
            "decode_vs_prefill_rel_err": float("%.3e" % e_dec)})
        if prev and prev != ref["source"]:
            ref["hf_reference"]["previous_source"] = prev
        _dump_json(os.path.join(refdir, "ref.json"), ref, ref_text)
        if g_text is not None:
            prev = (g.get("hf_reference") or {}).get("previous_source") or g.get("source")
            g["source"] = (src + "; greedy argmax loop with the KV cache (DynamicCache), equal to full "
                           "recompute without cache; prompt rendered with Python Jinja2 from "
                           "tokenizer_config.json, encoded by @lenml/tokenizers")
            g["hf_reference"] = dict(hf, **{"greedy_kv_cache": "equal", "greedy_full_recompute": "equal",
                                            "min_top2_margin": float("%.4g" % margin)})
            if prev and prev != g["source"]:
                g["hf_reference"]["previous_source"] = prev
            _dump_json(gpath, g, g_text)
        print("%s: provenance written to ref.json%s" % (name, " and greedy.json" if g_text is not None else ""))
    return failures


def model_class(mt, cfg_json, args, sources, commits, classes):
    """(ForCausalLM class, config object, provenance text) for model type mt: the installed
    transformers with --installed, else the --modeling file exec'd with the stand-ins; None when
    no --modeling file was given for mt. classes caches the loaded classes per type."""
    if args.installed:
        if mt not in classes:
            classes[mt] = load_installed(mt)
        cls, cfg_cls, src_path = classes[mt]
        c = {k: v for k, v in cfg_json.items() if k not in ("quantization", "quantization_config")}
        config = cfg_cls(**c)
        config._attn_implementation = "eager"
        import transformers
        return cls, config, "transformers %s (installed, %s)" % (transformers.__version__, src_path)
    if mt not in sources:
        return None
    if mt not in classes:
        install_stubs()
        classes[mt] = load_modeling(sources[mt], mt)
        if args.rope_utils:
            load_rope_utils(args.rope_utils)
    origin = ("huggingface/transformers@%s src/transformers/models/%s/modeling_%s.py, executed by "
              "scripts/ref/hf_exec.py with stand-ins for transformers internals"
              % (commits.get(mt, "unknown"), mt, mt))
    return classes[mt], make_config(cfg_json), origin


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modeling", action="append", default=[], help="transformers' modeling_<type>.py")
    ap.add_argument("--commit", action="append", default=[],
                    help="TYPE=SHA: huggingface/transformers commit of that file (default: the name of "
                         "the file's directory when it is a 40-hex sha)")
    ap.add_argument("--rope-utils", help="transformers' modeling_rope_utils.py (or an excerpt with "
                    "_compute_default_rope_parameters), for modeling files that take RoPE from it")
    ap.add_argument("--installed", action="store_true", help="import the installed transformers instead")
    ap.add_argument("--write", action="store_true", help="rewrite logits.f32 and ref.json provenance")
    ap.add_argument("--tol", type=float, default=1e-5, help="max rel error old vs new to accept --write")
    ap.add_argument("--dec-tol", type=float, default=5e-5,
                    help="max rel error decode vs prefill to accept --write (float32 rounding of the "
                         "recurrent vs chunked delta rule)")
    ap.add_argument("--model-dir", action="append", default=[],
                    help="a model directory with stored references in DIR/ref/ (ref.json + logits.f32, "
                         "greedy.json): check them; with --write, record provenance in the JSON files")
    ap.add_argument("--demo", action="store_true", help="--model-dir models/demo (the shipped demo model)")
    ap.add_argument("--tokens", help="with --model-dir: print transformers' argmax for these ids "
                    "(comma-separated) instead of checking the stored references")
    ap.add_argument("--greedy", type=int, default=0, help="with --tokens: also N greedy tokens (KV cache)")
    ap.add_argument("--logits-out", help="with --tokens: write the float32 logits [n, vocab] here")
    ap.add_argument("fixtures", nargs="*")
    args = ap.parse_args()
    if args.demo:
        args.model_dir.append(os.path.join(HERE, "..", "..", "models", "demo"))
    if not args.fixtures and not args.model_dir:
        ap.error("give fixture directories, --model-dir DIR or --demo")
    if args.tokens is not None and len(args.model_dir) != 1:
        ap.error("--tokens needs exactly one --model-dir")

    sources = {type_of_path(p): os.path.abspath(p) for p in args.modeling}
    commits = dict(c.split("=", 1) for c in args.commit)
    for mt, p in sources.items():
        if mt not in commits and _sha_of(p):
            commits[mt] = _sha_of(p)
    classes = {}
    failures = 0
    for md in args.model_dir:
        failures += check_model_dir(md, args, sources, commits, classes)
    for fx in args.fixtures:
        with open(os.path.join(fx, "config.json")) as f:
            cfg_json = json.load(f)
        with open(os.path.join(fx, "ref.json")) as f:
            ref_text = f.read()
        ref = json.loads(ref_text)
        mt = cfg_json["model_type"]
        got = model_class(mt, cfg_json, args, sources, commits, classes)
        if got is None:
            print("%s: no --modeling file for %s" % (fx, mt))
            failures += 1
            continue
        cls, config, origin = got
        ROPE_UTILS_USED[0] = False
        model = build_model(cls, config, fx, cfg_json, mt)
        tokens = ref["tokens"]
        pre = prefill(model, tokens)
        dec = decode(model, tokens, config)
        k = len(tokens) * 2 // 3
        e_split = rel(split_run(model, tokens, k), pre)
        old = torch.from_numpy(np.fromfile(os.path.join(fx, "logits.f32"), dtype="<f4").copy()).reshape(pre.shape)
        e_old = rel(old, pre)
        e_dec = rel(dec, pre)
        same = bool(torch.equal(old.argmax(-1), pre.argmax(-1))) and bool(torch.equal(dec.argmax(-1), pre.argmax(-1)))
        print("%-25s %-10s old-vs-hf %.3e  decode-vs-prefill %.3e  prefill%d+decode-vs-prefill %.3e  argmax %s"
              % (os.path.basename(os.path.normpath(fx)), mt, e_old, e_dec, k, e_split, "same" if same else "DIFFERENT"))
        ok = e_old <= args.tol and e_dec <= args.dec_tol and e_split <= args.dec_tol and same
        if not ok:
            failures += 1
        if args.write and ok:
            pre.numpy().astype("<f4").tofile(os.path.join(fx, "logits.f32"))
            top2 = pre.topk(2, dim=-1).values
            ref["argmax"] = pre.argmax(-1).tolist()
            if "min_argmax_margin" in ref:
                margin = float((top2[:, 0] - top2[:, 1]).min())
                ref["min_argmax_margin"] = round(margin, 6) if mt != "qwen3_next" else margin
            if "recurrent_vs_chunked_rel_err" in ref:
                ref["recurrent_vs_chunked_rel_err"] = e_dec
            ref["source"] = origin + "; PyTorch %s, float32, eager attention, prefill of all tokens" % torch.__version__
            ref["hf_reference"] = {
                "repo": "huggingface/transformers",
                "commit": commits.get(mt) if not args.installed else None,
                "file": "src/transformers/models/%s/modeling_%s.py" % (mt, mt),
                "torch": torch.__version__,
                "decode_vs_prefill_rel_err": float("%.3e" % e_dec),
                "prefill_%d_then_decode_vs_prefill_rel_err" % k: float("%.3e" % e_split),
                "previous_ref_rel_err": float("%.3e" % e_old),
            }
            if ROPE_UTILS_USED[0] and not args.installed:
                ref["hf_reference"]["rope_utils"] = "src/transformers/modeling_rope_utils.py@%s (_compute_default_rope_parameters)" % (
                    _sha_of(args.rope_utils) or "unknown")
            indent = 1
            with open(os.path.join(fx, "ref.json"), "w") as f:
                json.dump(ref, f, indent=indent)
                if ref_text.endswith("\n"):
                    f.write("\n")
    print("%d check(s) failed" % failures if failures else "all agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
