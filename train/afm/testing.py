"""Stand-ins for Apple's toolkit assets, built locally for tests (no Apple files are involved).

`write_synthetic_assets` writes a folder shaped like the toolkit's `assets/`: a `base-model.pt`
using the toolkit's key names (fused qkv behind `.wrapped`, zero-initialised LoRA adapter tensors,
KV-quantizer ranges, a tied output head) at any geometry, plus a tiny SentencePiece
`tokenizer.model` carrying the AFM chat pieces. Other tests (e.g. train.models dispatch) may use it.
"""

from __future__ import annotations

import io
import random
from contextlib import contextmanager
from pathlib import Path

import sentencepiece as spm
import torch

from train.afm.configuration import AFMTextV7Config, tiny_config
from train.afm.tokenizer import DEFAULT_SYSTEM_MESSAGE

_WORDS = (DEFAULT_SYSTEM_MESSAGE.lower().rstrip(".") + " plan the task title description question clarify seven "
          "atomic reply write haiku about ocean user assistant system beautiful better than ugly simple complex "
          "flat nested readability counts special cases rules errors never pass silently now json").split()


@contextmanager
def single_thread():
    """Tiny tensors on a shared 2-core machine: extra torch threads only fight over the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_tiny_sentencepiece(path: str | Path, model_type: str = "unigram", seed: int = 0,
                             byte_fallback: bool = False) -> Path:
    """Train a ~100-piece SentencePiece model with the AFM pieces <n>, <turn_start>, <turn_end> (a second or so)."""
    rng = random.Random(seed)
    words = _WORDS + [w.capitalize() for w in _WORDS] + list(".,:;?!0123456789\"'{}[]-")
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(3000)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=160, hard_vocab_limit=False,
        user_defined_symbols=["<n>", "<turn_start>", "<turn_end>"], model_type=model_type,
        character_coverage=1.0, byte_fallback=byte_fallback, num_threads=1, minloglevel=2,
    )
    path = Path(path)
    path.write_bytes(buffer.getvalue())
    return path


def _linear(generator, rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=generator) / cols**0.5


def _norm(generator, size: int) -> torch.Tensor:
    return 1.0 + 0.1 * torch.randn(size, generator=generator)


def _adapter(prefix: str, in_features: int, out_features: list[int], rank: int) -> dict[str, torch.Tensor]:
    """Zero-initialised toolkit LoRA tensors (a_transpose: in x r, b_transpose: r x out) for one layer."""
    if len(out_features) == 1:
        return {f"{prefix}.adapters.base_adapter.a_transpose": torch.zeros(in_features, rank),
                f"{prefix}.adapters.base_adapter.b_transpose": torch.zeros(rank, out_features[0])}
    tensors = {}
    for i, out in enumerate(out_features):
        tensors[f"{prefix}.adapters.base_adapter.lora_{i}.a_transpose"] = torch.zeros(in_features, rank)
        tensors[f"{prefix}.adapters.base_adapter.lora_{i}.b_transpose"] = torch.zeros(rank, out)
    return tensors


def toolkit_state_dict(config: AFMTextV7Config, seed: int = 0, rank: int = 4) -> dict[str, torch.Tensor]:
    """A state dict named like the toolkit's base-model.pt, with random base weights for `config`."""
    g = torch.Generator().manual_seed(seed)
    hidden, ffn, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q_rows, kv_rows = config.num_attention_heads * hd, config.num_key_value_heads * hd
    embedding = torch.randn(config.vocab_size, hidden, generator=g)
    sd = {"embedding.weight": embedding, "output_transform.weight": embedding, "output_norm.weight": _norm(g, hidden)}
    for segment, count in ((0, config.num_regular_layers), (1, config.num_kv_reuse_layers)):
        for i in range(count):
            p = f"layers.segment_{segment}.layer_{i}"
            sd[f"{p}.attention.norm.weight"] = _norm(g, hidden)
            if segment == 0:
                fused = _linear(g, q_rows + 2 * kv_rows, hidden)
                sd[f"{p}.attention.qkv_transform.wrapped.fused_linear.weight"] = fused
                sd.update(_adapter(f"{p}.attention.qkv_transform", hidden, [q_rows, kv_rows, kv_rows], rank))
                sd[f"{p}.attention.qk_norm.query_norm.weight"] = _norm(g, hd)
                sd[f"{p}.attention.qk_norm.key_norm.weight"] = _norm(g, hd)
                sd[f"{p}.attention.kv_quantizer.key_quantizer.range"] = torch.tensor([-4.0, 4.0])
                sd[f"{p}.attention.kv_quantizer.value_quantizer.range"] = torch.tensor([-2.0, 2.0])
            else:
                sd[f"{p}.attention.q_transform.wrapped.weight"] = _linear(g, q_rows, hidden)
                sd.update(_adapter(f"{p}.attention.q_transform", hidden, [q_rows], rank))
                sd[f"{p}.attention.q_norm.query_norm.weight"] = _norm(g, hd)
            sd[f"{p}.attention.output_transform.wrapped.weight"] = _linear(g, hidden, q_rows)
            sd.update(_adapter(f"{p}.attention.output_transform", q_rows, [hidden], rank))
            sd[f"{p}.feed_forward.norm.weight"] = _norm(g, hidden)
            ffn_layers = (("hidden_transform.linear_0", ffn, hidden), ("hidden_transform.linear_1", ffn, hidden),
                          ("output_transform", hidden, ffn))
            for name, rows, cols in ffn_layers:
                sd[f"{p}.feed_forward.{name}.wrapped.weight"] = _linear(g, rows, cols)
                sd.update(_adapter(f"{p}.feed_forward.{name}", cols, [rows], rank))
    return sd


def write_synthetic_assets(folder: str | Path, config: AFMTextV7Config | None = None, seed: int = 0,
                           state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write tokenizer.model + base-model.pt into `folder`; the vocabulary is sized to the tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_sentencepiece(folder / "tokenizer.model", seed=seed)
    if state_dict is None:
        if config is None:
            pieces = spm.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
            config = tiny_config(vocab_size=pieces)
        state_dict = toolkit_state_dict(config, seed=seed)
    torch.save(state_dict, folder / "base-model.pt")
    return folder
