"""PyTorch reference forward passes for qwen3_moe, qwen2_moe, mixtral and olmoe.

A line-by-line transcription of the forward computations in Hugging Face transformers
(eager attention path, float32), used where transformers itself is not installed. Sources,
repository huggingface/transformers:
  src/transformers/models/qwen3_moe/modeling_qwen3_moe.py   (Qwen3MoeRMSNorm, Qwen3MoeAttention,
      Qwen3MoeSparseMoeBlock, Qwen3MoeDecoderLayer: mlp_only_layers / decoder_sparse_step)
  src/transformers/models/qwen2_moe/modeling_qwen2_moe.py   (q/k/v bias, shared_expert,
      sigmoid shared_expert_gate, Qwen2MoeSparseMoeBlock)
  src/transformers/models/mixtral/modeling_mixtral.py       (MixtralSparseMoeBlock: softmax,
      top-k, always renormalised; MixtralBlockSparseTop2MLP w1/w2/w3)
  src/transformers/models/olmoe/modeling_olmoe.py           (q_norm/k_norm over the whole
      projection, clip_qkv, OlmoeSparseMoeBlock)
  src/transformers/models/llama/modeling_llama.py           (rotate_half, apply_rotary_pos_emb,
      repeat_kv, default RoPE inv_freq)
Module and parameter names equal the Hugging Face tensor names, so a checkpoint's state dict
loads with load_state_dict().
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


class Cfg:
    """Config values the forward pass needs, accepting both the published-checkpoint spelling
    (rope_theta, num_local_experts, torch_dtype) and transformers 5's (rope_parameters, dtype)."""

    def __init__(self, d):
        self.raw = d
        self.model_type = d["model_type"]
        self.hidden_size = d["hidden_size"]
        self.num_hidden_layers = d["num_hidden_layers"]
        self.num_attention_heads = d["num_attention_heads"]
        self.num_key_value_heads = d.get("num_key_value_heads", self.num_attention_heads)
        if self.model_type == "olmoe":  # modeling_olmoe.py: head_dim = hidden_size // num_heads
            self.head_dim = self.hidden_size // self.num_attention_heads
        else:
            self.head_dim = d.get("head_dim") or self.hidden_size // self.num_attention_heads
        self.rms_norm_eps = d.get("rms_norm_eps", 1e-6)
        if "rope_theta" in d:
            self.rope_theta = float(d["rope_theta"])
        else:
            rp = d["rope_parameters"]
            assert rp.get("rope_type", "default") == "default"
            self.rope_theta = float(rp["rope_theta"])
        rs = d.get("rope_scaling")
        assert rs is None or rs.get("rope_type", rs.get("type")) == "default"
        self.num_experts = d.get("num_experts", d.get("num_local_experts"))
        self.top_k = d["num_experts_per_tok"]
        # Mixtral always renormalises the top-k weights (modeling_mixtral.py).
        self.norm_topk_prob = True if self.model_type == "mixtral" else d.get("norm_topk_prob", False)
        self.intermediate_size = d.get("intermediate_size")
        self.moe_intermediate_size = d.get("moe_intermediate_size", self.intermediate_size)
        self.shared_expert_intermediate_size = d.get("shared_expert_intermediate_size")
        self.mlp_only_layers = d.get("mlp_only_layers", []) or []
        self.decoder_sparse_step = d.get("decoder_sparse_step", 1)
        self.tie_word_embeddings = d.get("tie_word_embeddings", False)
        self.attention_bias = d.get("attention_bias", False)
        self.qkv_bias = d.get("qkv_bias", True)  # qwen2_moe: q/k/v always carry a bias
        self.clip_qkv = d.get("clip_qkv")
        self.vocab_size = d["vocab_size"]
        assert d.get("hidden_act", "silu") == "silu"


class RMSNorm(nn.Module):
    """Qwen3MoeRMSNorm / Qwen2MoeRMSNorm / MixtralRMSNorm / OlmoeRMSNorm (identical)."""

    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def rope_cos_sin(cfg, position_ids):
    """Default RoPE (compute_default_rope_parameters + RotaryEmbedding.forward), float32.
    position_ids: [batch, seq] -> cos, sin: [batch, seq, head_dim]."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
    inv_freq_expanded = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].float()
    freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        mt = cfg.model_type
        H, KV, D, hs = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.head_dim = D
        self.num_heads = H
        self.num_key_value_heads = KV
        self.num_key_value_groups = H // KV
        self.scaling = D ** -0.5
        bias = cfg.qkv_bias if mt == "qwen2_moe" else (cfg.attention_bias if mt in ("qwen3_moe", "olmoe") else False)
        obias = cfg.attention_bias if mt in ("qwen3_moe", "olmoe") else False
        self.q_proj = nn.Linear(hs, H * D, bias=bias)
        self.k_proj = nn.Linear(hs, KV * D, bias=bias)
        self.v_proj = nn.Linear(hs, KV * D, bias=bias)
        self.o_proj = nn.Linear(H * D, hs, bias=obias)
        if mt == "qwen3_moe":  # per head: "unlike olmo, only on the head dim!"
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps)
        elif mt == "olmoe":  # over the whole projection
            self.q_norm = RMSNorm(hs, cfg.rms_norm_eps)
            self.k_norm = RMSNorm((hs // H) * KV, cfg.rms_norm_eps)

    def forward(self, hidden_states, cos, sin, attention_mask):
        bsz, q_len, _ = hidden_states.shape
        mt = self.cfg.model_type
        hidden_shape = (bsz, q_len, -1, self.head_dim)
        if mt == "qwen3_moe":
            query_states = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
            key_states = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        elif mt == "olmoe":
            query_states = self.q_norm(self.q_proj(hidden_states))
            key_states = self.k_norm(self.k_proj(hidden_states))
            value_states = self.v_proj(hidden_states)
            if self.cfg.clip_qkv is not None:
                c = self.cfg.clip_qkv
                query_states = query_states.clamp(min=-c, max=c)
                key_states = key_states.clamp(min=-c, max=c)
                value_states = value_states.clamp(min=-c, max=c)
            query_states = query_states.view(hidden_shape).transpose(1, 2)
            key_states = key_states.view(hidden_shape).transpose(1, 2)
            value_states = value_states.view(hidden_shape).transpose(1, 2)
        else:
            query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        # eager_attention_forward
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        if mt in ("qwen2_moe", "olmoe"):
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        else:
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scaling
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, -1).contiguous()
        return self.o_proj(attn_output)


class MLP(nn.Module):
    """Qwen3MoeMLP / Qwen2MoeMLP / OlmoeMLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, hs, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hs, inter, bias=False)
        self.up_proj = nn.Linear(hs, inter, bias=False)
        self.down_proj = nn.Linear(inter, hs, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MixtralExpert(nn.Module):
    """MixtralBlockSparseTop2MLP: w2(silu(w1(x)) * w3(x))."""

    def __init__(self, hs, inter):
        super().__init__()
        self.w1 = nn.Linear(hs, inter, bias=False)
        self.w2 = nn.Linear(inter, hs, bias=False)
        self.w3 = nn.Linear(hs, inter, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(nn.Module):
    """Qwen3MoeSparseMoeBlock / Qwen2MoeSparseMoeBlock / MixtralSparseMoeBlock / OlmoeSparseMoeBlock."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.norm_topk_prob = cfg.norm_topk_prob
        hs = cfg.hidden_size
        self.gate = nn.Linear(hs, cfg.num_experts, bias=False)
        if cfg.model_type == "mixtral":
            self.experts = nn.ModuleList([MixtralExpert(hs, cfg.intermediate_size) for _ in range(cfg.num_experts)])
        else:
            self.experts = nn.ModuleList([MLP(hs, cfg.moe_intermediate_size) for _ in range(cfg.num_experts)])
        if cfg.model_type == "qwen2_moe":
            self.shared_expert = MLP(hs, cfg.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(hs, 1, bias=False)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros(
            (batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype, device=hidden_states.device)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = (expert_mask.sum(dim=(-1, -2)) > 0).nonzero(as_tuple=True)[0].tolist()
        for expert_idx in expert_hit:
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
            final_hidden_states = final_hidden_states.index_add(0, top_x, current_hidden_states.to(hidden_states.dtype))
        if self.cfg.model_type == "qwen2_moe":
            shared_expert_output = self.shared_expert(hidden_states)
            shared_expert_output = torch.sigmoid(self.shared_expert_gate(hidden_states)) * shared_expert_output
            final_hidden_states = final_hidden_states + shared_expert_output
        return final_hidden_states.reshape(batch_size, sequence_length, hidden_dim), router_logits


def layer_is_sparse(cfg, layer_idx):
    """Qwen3MoeDecoderLayer / Qwen2MoeDecoderLayer rule; mixtral and olmoe: every layer."""
    if cfg.model_type in ("mixtral", "olmoe"):
        return True
    return (layer_idx not in cfg.mlp_only_layers) and (
        cfg.num_experts > 0 and (layer_idx + 1) % cfg.decoder_sparse_step == 0)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.self_attn = Attention(cfg)
        hs = cfg.hidden_size
        if layer_is_sparse(cfg, layer_idx):
            moe = SparseMoeBlock(cfg)
        else:
            moe = MLP(hs, cfg.intermediate_size)
        if cfg.model_type == "mixtral":
            self.block_sparse_moe = moe
        else:
            self.mlp = moe
        self.input_layernorm = RMSNorm(hs, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hs, cfg.rms_norm_eps)

    def forward(self, hidden_states, cos, sin, mask):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states, cos, sin, mask)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        mlp = self.block_sparse_moe if hasattr(self, "block_sparse_moe") else self.mlp
        out = mlp(hidden_states)
        router_logits = None
        if isinstance(out, tuple):
            out, router_logits = out
        return residual + out, router_logits


class Inner(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MoeForCausalLM(nn.Module):
    """<Arch>ForCausalLM: model.* plus lm_head (tied to embed_tokens when tie_word_embeddings)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Inner(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids, return_router_logits=False):
        """input_ids: [batch, seq] -> logits [batch, seq, vocab] (float32)."""
        hidden_states = self.model.embed_tokens(input_ids)
        bsz, seq = input_ids.shape
        position_ids = torch.arange(seq).unsqueeze(0).expand(bsz, -1)
        cos, sin = rope_cos_sin(self.cfg, position_ids)
        # causal mask as in create_causal_mask: 0 where allowed, finfo.min where masked
        minv = torch.finfo(hidden_states.dtype).min
        mask = torch.full((seq, seq), minv, dtype=hidden_states.dtype).triu(1)[None, None]
        routers = []
        for layer in self.model.layers:
            hidden_states, rl = layer(hidden_states, cos, sin, mask)
            if rl is not None:
                routers.append(rl)
        hidden_states = self.model.norm(hidden_states)
        w = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(hidden_states, w)
        if return_router_logits:
            return logits, routers
        return logits


def unstack_experts(tensors, cfg):
    """Turn stacked [E, out, in] expert tensors (MLX `switch_mlp.{gate,up,down}_proj.weight`)
    into the per-expert names of the transformers checkpoint layout."""
    out = {}
    for name, t in tensors.items():
        if ".switch_mlp." in name:
            pre, post = name.split(".switch_mlp.")
            proj = post.split(".")[0]
            if cfg.model_type == "mixtral":
                proj = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}[proj]
            for e in range(t.shape[0]):
                out["%s.experts.%d.%s.weight" % (pre, e, proj)] = t[e].clone()
        else:
            out[name] = t
    return out


def load_model_dir(d, dequant=None):
    """Load config.json + safetensors of a model dir into a float32 MoeForCausalLM.
    `dequant(tensors_raw, config) -> {name: float32 tensor}` handles quantized checkpoints;
    without it every tensor must be F32/BF16/F16."""
    with open(os.path.join(d, "config.json")) as f:
        raw_cfg = json.load(f)
    cfg = Cfg(raw_cfg)
    raw = st_io.read_model_dir(d)
    if dequant is not None:
        tensors = dequant(raw, raw_cfg)
    else:
        tensors = {k: st_io.to_float32(*v) for k, v in raw.items()}
    tensors = unstack_experts(tensors, cfg)
    model = MoeForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected, unexpected
    assert not missing, missing
    model.eval()
    return model
