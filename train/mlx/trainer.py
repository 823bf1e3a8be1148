"""SFT and ORPO with MLX: what `backend: mlx` runs for train.sft and train.orpo.

The same config keys as the torch backend mean the same thing: AdamW (betas 0.9/0.999, eps 1e-8,
weight_decay), the learning-rate schedule (linear warm-up over warmup_ratio, then cosine, linear
or constant), gradient clipping at 1.0, batch size x gradient_accumulation_steps per step, epochs
or max_steps, a seeded shuffle per epoch, validation loss before training and every epoch,
checkpoints (`save_strategy`, `save_steps`, `save_total_limit`) and `resume_from_checkpoint
latest|PATH`. The run folder is the torch backend's: a PEFT-layout adapter, run.json (with
"backend": "mlx"), loss_curve.png (+ preference_curves.png for ORPO).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from tqdm.auto import tqdm

from data.appendlog import write_json_atomically
from train.common import MLX_CHECKPOINT_STATE as STATE_FILE
from train.common import new_run_id, plot_curves, run_record, warn_ruler_leaks
from train.config import ConfigError
from train.mlx.data import epoch_order, orpo_examples, pad_batch, sft_examples
from train.mlx.lora import apply_lora, load_peft_adapter, save_peft_adapter, set_lora_state
from train.mlx.losses import orpo_loss, sft_loss
from train.mlx.models import MLXBase, load_mlx_base

OPTIMIZER_FILE = "optimizer.safetensors"
MAX_GRAD_NORM = 1.0                        # transformers' default, which the torch backend uses


def mlx_runtime(device: str, precision: str) -> tuple[str, str]:
    """(device, precision) for MLX: the Metal GPU when present (device auto|mps|gpu), else CPU;
    bf16 on the GPU, fp32 on CPU, unless precision says otherwise."""
    if device == "cuda":
        raise ConfigError("device: cuda with backend: mlx; MLX runs on Apple silicon (Metal) or "
                          "the CPU. Use backend: torch on CUDA machines")
    gpu = device in ("auto", "mps", "gpu") and mx.metal.is_available()
    mx.set_default_device(mx.gpu if gpu else mx.cpu)
    resolved = "gpu" if gpu else "cpu"
    if precision == "auto":
        precision = "bf16" if gpu else "fp32"
    return resolved, precision


def check_mlx_config(cfg) -> None:
    """Keys the torch backend honours that MLX cannot, refused by name."""
    problems = []
    if getattr(cfg, "packing", False):
        problems.append("packing: true (padding-free packing is torch/TRL only)")
    if cfg.use_liger_kernel:
        problems.append("use_liger_kernel: true (CUDA only)")
    if cfg.report_to not in ("none", "tensorboard"):
        problems.append(f"report_to: {cfg.report_to} (backend mlx writes none or tensorboard)")
    if problems:
        raise ConfigError("backend: mlx does not support " + "; ".join(problems))


def lr_at(step: int, total: int, cfg) -> float:
    """transformers' schedules: linear warm-up, then cosine / linear decay or constant."""
    warmup = math.ceil(cfg.warmup_ratio * total) if cfg.warmup_ratio < 1 else int(cfg.warmup_ratio)
    if step < warmup:
        return cfg.learning_rate * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    kind = cfg.lr_scheduler_type
    if kind == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return cfg.learning_rate * max(0.0, 1.0 - progress)
    if kind in ("constant", "constant_with_warmup"):
        return cfg.learning_rate
    raise ConfigError(f"lr_scheduler_type: {kind!r}; backend mlx takes cosine, linear, constant, "
                      "constant_with_warmup")


def checkpoint_layer(layer: nn.Module) -> None:
    """Gradient checkpointing for this one layer (mx.checkpoint), by giving the instance its own
    subclass; mlx-lm's grad_checkpoint patches the class, i.e. every model in the process."""
    base_cls = type(layer)
    call = base_cls.__call__

    def checkpointed(module, *args, **kwargs):
        def inner(params, *args, **kwargs):
            module.update(params)
            return call(module, *args, **kwargs)
        return mx.checkpoint(inner)(module.trainable_parameters(), *args, **kwargs)

    layer.__class__ = type(base_cls.__name__, (base_cls,), {"__call__": checkpointed})


def checkpoint_layers(base: MLXBase) -> None:
    """Every decoder layer but AFM's KV source layer, which hands its keys/values to the reuse
    layers through the cache (a side channel mx.checkpoint's recomputation would cut)."""
    for i, layer in enumerate(base.model.layers):
        if not (base.kind == "afm" and i == base.num_regular_layers - 1):
            checkpoint_layer(layer)


@dataclass
class LoopState:
    step: int = 0
    history: list = field(default_factory=list)     # transformers-style log records


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("checkpoint-*"),
                  key=lambda p: int(p.name.split("-")[-1]))


def checkpoint_to_resume_mlx(out: Path, value: str | None) -> Path | None:
    if not value or value.lower() in ("false", "none", "no"):
        return None
    if value.lower() in ("latest", "true", "yes"):
        found = _checkpoints(out)
        if not found:
            raise FileNotFoundError(f"{out}/checkpoints: no checkpoint to resume from")
        path = found[-1]
    else:
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {value}")
    if not (path / STATE_FILE).exists():
        raise ConfigError(f"{path}: this checkpoint was written by the torch backend (no "
                          f"{STATE_FILE}); resume it with backend: torch, or start a fresh run")
    return path


def save_checkpoint(out: Path, state: LoopState, loras: dict, optimizer, lora_kw: dict,
                    limit: int) -> None:
    path = out / "checkpoints" / f"checkpoint-{state.step}"
    save_peft_adapter(loras, path, **lora_kw)
    flat = dict(tree_flatten(optimizer.state))
    mx.save_safetensors(str(path / OPTIMIZER_FILE), {k: v for k, v in flat.items()
                                                     if isinstance(v, mx.array)})
    write_json_atomically(path / STATE_FILE, {"backend": "mlx", "step": state.step,
                                             "log_history": state.history})
    for old in _checkpoints(out)[:-limit] if limit and limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def restore_checkpoint(path: Path, state: LoopState, loras: dict, optimizer) -> None:
    from safetensors.numpy import load_file
    set_lora_state(loras, load_file(str(path / "adapter_model.safetensors")), str(path))
    saved = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    state.step, state.history = int(saved["step"]), list(saved["log_history"])
    arrays = mx.load(str(path / OPTIMIZER_FILE))
    optimizer.state = tree_unflatten(list(arrays.items()))


def train_loop(*, base: MLXBase, loras: dict, cfg, train_items: list, val_items: list,
               batch_loss, make_batch, out: Path, resume: Path | None, lora_kw: dict,
               metric_keys: tuple = ()) -> tuple[LoopState, dict, dict]:
    """Optimise the LoRA; returns (state, eval before, eval after). `batch_loss(model, batch)`
    -> (loss total, weight, metrics); a step's loss and gradient are totals / total weight."""
    model = base.model
    per_epoch = math.ceil(math.ceil(len(train_items) / cfg.per_device_train_batch_size)
                          / cfg.gradient_accumulation_steps)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * per_epoch)
    # bias_correction: torch's AdamW corrects, MLX's default does not (3x larger first steps).
    optimizer = optim.AdamW(learning_rate=cfg.learning_rate, betas=[0.9, 0.999], eps=1e-8,
                            weight_decay=cfg.weight_decay, bias_correction=True)
    optimizer.init(model.trainable_parameters())
    state = LoopState()
    if resume is not None:
        restore_checkpoint(resume, state, loras, optimizer)
    writer = None
    if cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "checkpoints" / "runs"))

    def loss_fn(model, batch):
        total_loss, weight, metrics = batch_loss(model, batch)
        return total_loss, (weight, metrics)

    value_and_grad = nn.value_and_grad(model, loss_fn)

    def evaluate(prefix: str) -> dict:
        if not val_items:
            return {}
        model.eval()
        totals, weights, sums = 0.0, 0.0, {}
        for start in range(0, len(val_items), cfg.per_device_eval_batch_size):
            loss, weight, metrics = batch_loss(model, make_batch(
                val_items[start:start + cfg.per_device_eval_batch_size]))
            totals, weights = totals + float(loss), weights + float(weight)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * float(weight)
        model.train()
        return {f"{prefix}loss": totals / max(weights, 1e-12),
                **{f"{prefix}{k}": v / max(weights, 1e-12) for k, v in sums.items()}}

    before = evaluate("eval_") if resume is None else {}
    if before:
        state.history.append({**before, "step": 0, "epoch": 0.0})
    model.train()
    bar = tqdm(total=total, initial=state.step, disable=not cfg.progress, desc="mlx training",
               unit="step")
    while state.step < total:
        epoch, within = divmod(state.step, per_epoch)
        order = epoch_order(len(train_items), cfg.seed, epoch)
        micro = [order[i:i + cfg.per_device_train_batch_size]
                 for i in range(0, len(order), cfg.per_device_train_batch_size)]
        groups = [micro[i:i + cfg.gradient_accumulation_steps]
                  for i in range(0, len(micro), cfg.gradient_accumulation_steps)]
        for group in groups[within:]:
            grads, loss_total, weight_total, sums = None, 0.0, 0.0, {}
            for indices in group:
                batch = make_batch([train_items[i] for i in indices])
                (loss, (weight, metrics)), g = value_and_grad(model, batch)
                grads = g if grads is None else tree_map(mx.add, grads, g)
                mx.eval(grads, loss, weight)
                loss_total, weight_total = loss_total + float(loss), weight_total + float(weight)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * float(weight)
            grads = tree_map(lambda g: g / weight_total, grads)
            grads, grad_norm = optim.clip_grad_norm(grads, MAX_GRAD_NORM)
            optimizer.learning_rate = mx.array(lr_at(state.step, total, cfg))
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state)
            state.step += 1
            bar.update(1)
            record = {"loss": loss_total / weight_total, "grad_norm": float(grad_norm),
                      "learning_rate": lr_at(state.step - 1, total, cfg),
                      **{k: v / weight_total for k, v in sums.items()},
                      "step": state.step, "epoch": round(state.step / per_epoch, 4)}
            if state.step == 1 or state.step % max(1, cfg.logging_steps) == 0:
                state.history.append(record)
                if writer is not None:
                    for k, v in record.items():
                        if k not in ("step", "epoch"):
                            writer.add_scalar(f"train/{k}", v, state.step)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            end_of_epoch = state.step % per_epoch == 0 or state.step == total
            if end_of_epoch and val_items:
                ev = evaluate("eval_")
                state.history.append({**ev, "step": state.step, "epoch": record["epoch"]})
                if writer is not None:
                    writer.add_scalar("eval/loss", ev["eval_loss"], state.step)
            if (cfg.save_strategy == "epoch" and end_of_epoch) or (
                    cfg.save_strategy == "steps" and state.step % cfg.save_steps == 0):
                save_checkpoint(out, state, loras, optimizer, lora_kw, cfg.save_total_limit)
            if state.step >= total:
                break
    bar.close()
    if writer is not None:
        writer.close()
    last = [r for r in state.history if "eval_loss" in r]
    after = last[-1] if last and last[-1]["step"] == state.step else evaluate("eval_")
    model.eval()
    return state, before, after


def _prepare(cfg):
    from train.mlx import require_mlx
    require_mlx()
    check_mlx_config(cfg)
    device, precision = mlx_runtime(cfg.device, cfg.precision)
    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    base = load_mlx_base(cfg.model_name_or_path, precision=precision, kv_quant=cfg.kv_quant)
    if cfg.gradient_checkpointing:
        checkpoint_layers(base)
    base_info = dict(base.base_info, device=device, precision=precision)
    return base, base_info


def _lora_kw(cfg, base_info: dict) -> dict:
    return dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                targets=list(cfg.lora_target_modules), base_name=base_info["name_or_path"])


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("mlx", "mlx-lm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def run_sft_mlx(cfg, callbacks: list | None = None) -> Path:
    from train.inputs import load_sft_datasets, sft_data_record, warn_prompt_mismatches

    if callbacks:
        print("note: backend mlx ignores transformers callbacks", file=sys.stderr)
    out = Path(cfg.output_dir)
    resume = checkpoint_to_resume_mlx(out, cfg.resume_from_checkpoint)
    _, val_ds, rows = load_sft_datasets(cfg)
    base, base_info = _prepare(cfg)
    data = sft_data_record(cfg.train_file, cfg.val_file, rows, len(val_ds or []),
                           getattr(cfg, "input_pattern", "") or None)
    warn_ruler_leaks(data)
    warn_prompt_mismatches(data)
    tok = base.tokenizer
    train_items = sft_examples(tok, rows, cfg.max_length)
    if not train_items:
        raise ConfigError(f"{cfg.train_file}: no training example keeps any answer token within "
                          f"max_length={cfg.max_length}; raise max_length")
    val_items = sft_examples(tok, [dict(r) for r in val_ds], cfg.max_length) if val_ds else []
    loras = apply_lora(base, cfg.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)

    def batch_loss(model, batch):
        ids, labels, _ = batch
        total, count = sft_loss(model, ids, labels)
        return total, count, {}

    t0 = time.time()
    lora_kw = _lora_kw(cfg, base_info)
    state, before, after = train_loop(
        base=base, loras=loras, cfg=cfg, train_items=train_items, val_items=val_items,
        batch_loss=batch_loss, make_batch=lambda items: pad_batch(items, tok.pad_token_id),
        out=out, resume=resume, lora_kw=lora_kw)
    save_peft_adapter(loras, out, **lora_kw)
    history = state.history
    metrics = {"train_loss": [r["loss"] for r in history if "loss" in r],
               "eval_loss": [r["eval_loss"] for r in history if "eval_loss" in r],
               "initial_eval_loss": before.get("eval_loss"),
               "final_eval_loss": after.get("eval_loss"), "global_step": state.step,
               "world_size": 1, "train_seconds": round(time.time() - t0, 1)}
    plot_curves(history, out / "loss_curve.png", ("loss", "eval_loss"),
                f"SFT (mlx) {cfg.model_name_or_path}")
    write_json_atomically(out / "run.json", run_record(
        stage="sft", run_id=new_run_id("sft", cfg), cfg=cfg, base_info=base_info, data=data,
        metrics=metrics, extra={"backend": "mlx", "mlx_versions": _versions(),
                                "resumed_from": str(resume) if resume else None}))
    return out


def attach_adapter_init_mlx(cfg, base: MLXBase, base_info: dict) -> tuple[dict, dict]:
    """Continue an SFT adapter (from either backend: both write PEFT's layout)."""
    from train.preference import adapter_init_run, adopt_adapter_shape, started_from_record

    run = adapter_init_run(cfg, base_info)
    loras, peft_cfg = load_peft_adapter(base, cfg.adapter_init)
    adopt_adapter_shape(cfg, peft_cfg["r"], peft_cfg["lora_alpha"], peft_cfg.get("lora_dropout"),
                        peft_cfg["target_modules"])
    return loras, started_from_record(cfg, run, run.get("backend", "torch"))


def run_orpo_mlx(cfg, callbacks: list | None = None) -> Path:
    from train.inputs import data_record
    from train.preference import load_pair_datasets, mean_or_none, orpo_metrics, plot_orpo_curves

    out = Path(cfg.output_dir)
    resume = checkpoint_to_resume_mlx(out, cfg.resume_from_checkpoint)
    train_ds, val_ds = load_pair_datasets(cfg)
    base, base_info = _prepare(cfg)
    started_from = None
    if cfg.adapter_init:
        loras, started_from = attach_adapter_init_mlx(cfg, base, base_info)
    else:
        loras = apply_lora(base, cfg.lora_target_modules, cfg.lora_r, cfg.lora_alpha,
                           cfg.lora_dropout)
    data = data_record(cfg.train_file, cfg.val_file, len(train_ds), len(val_ds or []))
    warn_ruler_leaks(data)
    tok = base.tokenizer
    train_items = orpo_examples(tok, [dict(r) for r in train_ds], cfg.max_length)
    val_items = orpo_examples(tok, [dict(r) for r in val_ds], cfg.max_length) if val_ds else []

    def make_batch(pairs):
        width = max(len(e.input_ids) for pair in pairs for e in pair)
        return (pad_batch([c for c, _ in pairs], tok.pad_token_id, width),
                pad_batch([r for _, r in pairs], tok.pad_token_id, width))

    def batch_loss(model, batch):
        loss, metrics = orpo_loss(model, batch[0], batch[1], cfg.beta, cfg.nll_on_completion_only)
        return loss, mx.array(1.0), metrics

    def margins() -> float | None:
        if not (cfg.measure_margins and val_items):
            return None
        out_ = []
        for start in range(0, len(val_items), cfg.per_device_eval_batch_size):
            chunk = val_items[start:start + cfg.per_device_eval_batch_size]
            _, _, metrics = batch_loss(base.model, make_batch(chunk))
            out_ += [float(metrics["rewards/margins"]) / cfg.beta] * len(chunk)
        return mean_or_none(out_)

    base.model.eval()
    margin_before = margins()
    t0 = time.time()
    lora_kw = _lora_kw(cfg, base_info)
    state, _, after = train_loop(
        base=base, loras=loras, cfg=cfg, train_items=train_items, val_items=val_items,
        batch_loss=batch_loss, make_batch=make_batch, out=out, resume=resume, lora_kw=lora_kw)
    margin_after = margins()
    save_peft_adapter(loras, out, **lora_kw)
    tok.save_pretrained(str(out / "tokenizer"))
    history = state.history
    metrics = {**orpo_metrics(history, after),
               "val_logp_margin_before": margin_before, "val_logp_margin_after": margin_after,
               "global_step": state.step, "train_seconds": round(time.time() - t0, 1),
               "device": base_info["device"], "precision": base_info["precision"]}
    plot_orpo_curves(history, out, f"ORPO (mlx) {cfg.model_name_or_path}")
    write_json_atomically(out / "run.json", run_record(
        stage="orpo", run_id=new_run_id("orpo", cfg), cfg=cfg, base_info=base_info, data=data,
        metrics=metrics, extra={"backend": "mlx", "mlx_versions": _versions(),
                                "resumed_from": str(resume) if resume else None,
                                "started_from": started_from}))
    return out
