"""AFMTextV7Model / AFMTextV7ForCausalLM: Apple's on-device text model for transformers + PEFT.

Structure (per decoder layer, pre-norm residual):
    h = x + o_proj(attention(input_layernorm(x)))
    out = h + down_proj(silu(gate_proj(n)) * up_proj(n)),  n = post_attention_layernorm(h)
Attention: q = q_norm(rope(q_proj(x))), k = k_norm(rope(k_proj(x))), v = v_proj(x) — rotary is
applied *before* the per-head RMSNorm, as in Apple's model. KV-reuse layers (the last
`num_kv_reuse_layers`) only have q_proj/o_proj and attend to the keys/values produced by the last
regular layer (`config.kv_source_layer`), so the KV cache holds nothing for them.

The 8-bit fake quantisation Apple applies to the KV cache at inference (the checkpoint's
`kv_quantizer` ranges) is off by default (training in full precision, as LoRA training does);
`config.kv_quant = "device"` turns it on with a straight-through gradient (`fake_int8`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from train.afm.configuration import AFMTextV7Config
from train.afm.rope import apply_rotary, rotary_cos_sin


class AFMRMSNorm(nn.Module):
    """RMSNorm computed in at least float32 (the class name matters: transformers initialises '*RMSNorm' to 1)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class AFMMLP(nn.Module):
    def __init__(self, config: AFMTextV7Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return states
    batch, kv_heads, seq, dim = states.shape
    return states[:, :, None].expand(batch, kv_heads, groups, seq, dim).reshape(batch, kv_heads * groups, seq, dim)


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention; the same call signature as transformers' sdpa/flash interfaces."""
    key = _repeat_kv(key, module.num_key_value_groups)
    value = _repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    weights = weights.to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def fake_int8(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Round to the int8 grid of `step` (codes -128..127) in float32, as Apple's runtime stores the
    KV cache. The backward pass is the identity (straight-through), so K/V LoRA keeps a gradient."""
    q = (torch.clamp(torch.round(x.float() / step), -128, 127) * step).to(x.dtype)
    return x + (q - x).detach()


class AFMAttention(nn.Module):
    def __init__(self, config: AFMTextV7Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.reuses_kv = layer_idx >= config.num_regular_layers
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.head_dim**-0.5
        self.is_causal = True
        query_width = config.num_attention_heads * config.head_dim
        kv_width = config.num_key_value_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, query_width, bias=False)
        if not self.reuses_kv:
            self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
            self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(query_width, config.hidden_size, bias=False)
        self.q_norm = AFMRMSNorm(config.head_dim, config.rms_norm_eps)
        if not self.reuses_kv:
            self.k_norm = AFMRMSNorm(config.head_dim, config.rms_norm_eps)
            # int8 steps for kv_quant "device", set by the loader from the checkpoint's ranges.
            self.register_buffer("key_step", torch.tensor(1.0), persistent=False)
            self.register_buffer("value_step", torch.tensor(1.0), persistent=False)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = states.shape
        return states.view(batch, seq, -1, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states, position_embeddings, attention_mask, shared_key=None, shared_value=None,
                cache: Cache | None = None, **kwargs):
        cos, sin = position_embeddings
        layout = self.config.rope_layout
        query = self.q_norm(apply_rotary(self._heads(self.q_proj(hidden_states)), cos, sin, layout))
        if self.reuses_kv:
            key, value = shared_key, shared_value
        else:
            key = self.k_norm(apply_rotary(self._heads(self.k_proj(hidden_states)), cos, sin, layout))
            value = self._heads(self.v_proj(hidden_states))
            if self.config.kv_quant == "device":
                key, value = fake_int8(key, self.key_step), fake_int8(value, self.value_step)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention)
        output, _ = attention(
            self, query, key, value, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        output = self.o_proj(output.reshape(*hidden_states.shape[:-1], -1).contiguous())
        # Regular layers hand back their full (cached + new) keys/values for the reuse layers.
        return output, (None if self.reuses_kv else key), (None if self.reuses_kv else value)


class AFMTextV7DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: AFMTextV7Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = AFMAttention(config, layer_idx)
        self.mlp = AFMMLP(config)
        self.input_layernorm = AFMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = AFMRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, shared_key=None, shared_value=None, *, attention_mask=None,
                position_embeddings=None, cache: Cache | None = None, **kwargs):
        # shared_key/shared_value are positional on purpose: under reentrant gradient checkpointing
        # only positional tensors carry gradients back into the layer that produced them.
        attn_out, key, value = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask,
            shared_key=shared_key, shared_value=shared_value, cache=cache, **kwargs,
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, key, value


class AFMTextV7PreTrainedModel(PreTrainedModel):
    config: AFMTextV7Config
    config_class = AFMTextV7Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AFMTextV7DecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True


class AFMTextV7Model(AFMTextV7PreTrainedModel):
    def __init__(self, config: AFMTextV7Config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(AFMTextV7DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = AFMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, use_cache: bool | None = None, output_hidden_states: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if checkpointing:
            use_cache = False  # a checkpointed layer would write the cache twice (forward + replay)
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # Count real tokens only, so a left-padded row starts at position 0 (as generate() does).
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1]:]
        elif position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None, :] + past
        mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            cache=cache, position_ids=position_ids,
        )
        if position_ids.shape[0] != inputs_embeds.shape[0]:
            position_ids = position_ids.expand(inputs_embeds.shape[0], -1)
        position_embeddings = rotary_cos_sin(
            position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype
        )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        all_hidden = [] if output_hidden_states else None
        hidden_states, shared_key, shared_value = inputs_embeds, None, None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, key, value = layer(
                hidden_states, shared_key, shared_value, attention_mask=mask,
                position_embeddings=position_embeddings, cache=cache, **kwargs,
            )
            if layer.layer_idx == self.config.kv_source_layer:
                shared_key, shared_value = key, value
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, cache=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class AFMTextV7ForCausalLM(AFMTextV7PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: AFMTextV7Config):
        super().__init__(config)
        self.model = AFMTextV7Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, labels=None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            keep = slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
        else:
            keep = logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
        )
