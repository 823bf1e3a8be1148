"""The MLX generation engine (`--engine mlx` in eval.run and prefs.build / data.prefs).

Same prompts, tokenisation and left padding as eval.generate's torch engine; rotary positions
count real tokens only (mlx-lm's BatchKVCache starts a row's offset at minus its padding), so a
greedy batch decodes each row as it would alone, and finished rows leave the batch and the cache.
Sampling (temperature, top-p) uses MLX's own generator: seeded and repeatable, but not the
torch engine's random stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from train.mlx.models import MLXBase


@dataclass
class MLXEngineModel:
    """What eval's pipelines hold as `model` when the engine is MLX."""
    base: MLXBase
    max_position_embeddings: int | None = None
    is_mlx_engine: bool = True

    @property
    def config(self):
        return self


def load_mlx_engine(base: str, adapter: str | None, *, precision: str = "fp32",
                    kv_quant: str = "off"):
    """(engine model, tokenizer, base_info) — the MLX twin of train.models.load_with_adapter."""
    import json
    from pathlib import Path

    from train.mlx import require_mlx
    from train.mlx.lora import load_peft_adapter
    from train.mlx.models import load_mlx_base

    require_mlx("--engine mlx")
    if precision == "auto":
        precision = "fp32"
    mlx_base = load_mlx_base(base, precision=precision, kv_quant=kv_quant)
    if adapter:
        load_peft_adapter(mlx_base, adapter)
    mlx_base.model.eval()
    limit = None
    config_path = Path(mlx_base.base_info["name_or_path"]) / "config.json"
    if mlx_base.kind == "hf" and config_path.exists():
        limit = json.loads(config_path.read_text(encoding="utf-8")).get("max_position_embeddings")
    return MLXEngineModel(mlx_base, limit), mlx_base.tokenizer, mlx_base.base_info


def _caches(base: MLXBase, left_padding: list[int]) -> list:
    n = base.num_regular_layers if base.kind == "afm" else len(base.model.layers)
    return [BatchKVCache(list(left_padding)) for _ in range(n)]


def _pick(logits: mx.array, do_sample: bool, temperature: float, top_p: float) -> mx.array:
    if not do_sample:
        return mx.argmax(logits, axis=-1)
    logits = logits / max(temperature, 1e-6)
    if top_p < 1.0:
        order = mx.argsort(-logits, axis=-1)
        sorted_logits = mx.take_along_axis(logits, order, axis=-1)
        probs = mx.softmax(sorted_logits, axis=-1)
        cumulative = mx.cumsum(probs, axis=-1)
        keep = (cumulative - probs) < top_p            # always keeps the most likely token
        sorted_logits = mx.where(keep, sorted_logits, -mx.inf)
        choice = mx.random.categorical(sorted_logits, axis=-1)
        return mx.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
    return mx.random.categorical(logits, axis=-1)


def decode_batch(base: MLXBase, rows: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
                 pad_token_id: int, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, guide=None) -> list[list[int]]:
    """New token ids per row (EOS included when emitted); left-padded, finished rows dropped.
    `guide` (train.guided.GuidedRows) masks each step's logits to the contract's schema."""
    width = max(len(r) for r in rows)
    padding = [width - len(r) for r in rows]
    ids = mx.array([[pad_token_id] * p + r for p, r in zip(padding, rows)])
    cache = _caches(base, padding)
    active = list(range(len(rows)))
    out: list[list[int]] = [[] for _ in rows]
    step_ids = ids
    for step in range(max_new_tokens):
        logits = base.model(step_ids, cache=cache)[:, -1, :].astype(mx.float32)
        if guide is not None:
            logits = mx.where(mx.array(guide.allowed(active, logits.shape[-1])), logits, -mx.inf)
        tokens = _pick(logits, do_sample, temperature, top_p)
        mx.eval(tokens)
        picked = tokens.tolist()
        if guide is not None:
            guide.advance(active, picked)
        for row, tok in zip(active, picked):
            out[row].append(tok)
        going = [i for i, tok in enumerate(picked) if tok != eos_token_id]
        if step == max_new_tokens - 1 or not going:
            break
        if len(going) < len(active):
            keep = mx.array(going)
            for c in cache:
                c.filter(keep)
            active = [active[i] for i in going]
            tokens = tokens[keep]
        step_ids = tokens[:, None]
    return out


def generate_texts_mlx(engine: MLXEngineModel, tokenizer, prompts: list[str], *,
                       max_new_tokens: int = 640, batch_size: int = 16, do_sample: bool = False,
                       temperature: float = 1.0, top_p: float = 1.0,
                       num_return_sequences: int = 1, seed: int | None = None,
                       progress: bool = False, guided: bool = False,
                       n_questions: int = 7) -> list[list[str]]:
    """eval.generate.generate_texts for the MLX engine (same arguments, same result shape)."""
    from tqdm.auto import tqdm

    if seed is not None:
        mx.random.seed(seed)
    out: list[list[str]] = []
    for start in tqdm(range(0, len(prompts), batch_size), disable=not progress,
                      desc="generating (mlx)", mininterval=2.0):
        chunk = prompts[start:start + batch_size]
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        rows = [ids for ids in encoded for _ in range(num_return_sequences)]
        guide = None
        if guided:
            from train.guided import GuidedRows
            guide = GuidedRows(tokenizer, len(rows), n_questions)
        new = decode_batch(engine.base, rows, max_new_tokens=max_new_tokens,
                           eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, guide=guide)
        texts = [tokenizer.decode(r, skip_special_tokens=True) for r in new]
        for i in range(len(chunk)):
            out.append(texts[i * num_return_sequences:(i + 1) * num_return_sequences])
    return out
