"""AFMTextV7Config: the configuration of Apple's on-device text model (the 26.0 system model).

Defaults are the published full-size geometry. Layers 0..N-R-1 are regular decoder layers;
the last R layers (`num_kv_reuse_layers`) have no key/value projections and attend with the
keys/values computed by the last regular layer.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from train.afm.rope import ROPE_LAYOUTS

# baseModelSignature of the macOS/iOS 26.0 system model; an adapter carries it in metadata.json.
AFM_26_0_SIGNATURE = "9799725ff8e851184037110b422d891ad3b92ec1"

# PEFT target_modules that reproduce Apple's LoRA set exactly (q,k,v,o,gate,up,down on regular
# layers; q,o,gate,up,down on KV-reuse layers, which simply have no k_proj/v_proj modules).
KV_QUANT_MODES = ("off", "device")

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class AFMTextV7Config(PreTrainedConfig):
    model_type = "afm_text_v7"

    vocab_size: int = 153600
    hidden_size: int = 2048
    intermediate_size: int = 6656
    num_hidden_layers: int = 56
    num_kv_reuse_layers: int = 21
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_layout: str = "interleaved"
    # "device": fake-quantise K/V to int8 with the checkpoint's kv_quantizer steps, as Apple's
    # runtime does (straight-through gradient, so K/V LoRA still learns); "off": full precision.
    kv_quant: str = "off"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        problems = []
        if self.rope_layout not in ROPE_LAYOUTS:
            problems.append(f"rope_layout={self.rope_layout!r} (valid: {', '.join(ROPE_LAYOUTS)})")
        if self.kv_quant not in KV_QUANT_MODES:
            problems.append(f"kv_quant={self.kv_quant!r} (valid: {', '.join(KV_QUANT_MODES)})")
        if not 0 <= self.num_kv_reuse_layers < self.num_hidden_layers:
            problems.append(
                f"num_kv_reuse_layers={self.num_kv_reuse_layers} must be >= 0 and below "
                f"num_hidden_layers={self.num_hidden_layers} (at least one layer must compute K/V)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for rotary pairs")
        if not self.tie_word_embeddings:
            problems.append("tie_word_embeddings=False (the AFM text model ties input and output embeddings)")
        if problems:
            raise ValueError("invalid AFMTextV7Config: " + "; ".join(problems))
        super().__post_init__(**kwargs)

    @property
    def num_regular_layers(self) -> int:
        return self.num_hidden_layers - self.num_kv_reuse_layers

    @property
    def kv_source_layer(self) -> int:
        """Index of the last regular layer, whose keys/values the reuse layers attend to."""
        return self.num_regular_layers - 1

    @property
    def kv_sharing_modes(self) -> list[str | None]:
        """Read by transformers' DynamicCache/StaticCache: reuse layers get a cache slot that stores nothing."""
        modes: list[str | None] = [None] * self.num_regular_layers + ["reuse"] * self.num_kv_reuse_layers
        modes[self.kv_source_layer] = "store"
        return modes


def tiny_config(vocab_size: int = 256, **overrides) -> AFMTextV7Config:
    """Same structure as the full model (GQA, QK-norm, SwiGLU at 3.25x, KV reuse) at toy size, for tests."""
    geometry = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=208,
        num_hidden_layers=5,
        num_kv_reuse_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
    )
    geometry.update(overrides)
    return AFMTextV7Config(**geometry)
