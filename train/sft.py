"""LoRA SFT: `python -m train.sft --config configs/sft.yaml [--any_key value ...]`.

TRL's SFTTrainer with a PEFT LoRA (Apple's defaults: rank 32, alpha 16, on q/k/v/o/gate/up/down),
loss on the assistant answer only (prompt/completion data), device and precision chosen
automatically (CUDA -> MPS -> CPU; bf16 where supported), validation loss every epoch,
checkpoints with `--resume_from_checkpoint latest|PATH`, a seed and a progress bar. The output
folder holds the adapter (safetensors), run.json and loss_curve.png.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from data.corpus import ruler_inputs
from data.leak import LeakGuard
from train.common import (TrainingFields, checkpoint_to_resume, file_sha256, lora_config,
                          new_run_id, plot_curves, resolve_runtime, run_record, stage_main,
                          trainer_args_kwargs, training_inputs, warn_ruler_leaks)
from train.config import ConfigError


@dataclass
class SFTRunConfig(TrainingFields):
    train_file: str = field(default="runs/data/sft/train.jsonl",
                            metadata={"help": "prompt/completion JSONL from python -m data.sft"})


def _load_datasets(cfg):
    from datasets import load_dataset

    for name in ("train_file", "val_file"):
        p = getattr(cfg, name)
        if p and not Path(p).exists():
            raise FileNotFoundError(f"{name} {p} does not exist; build it with "
                                    "`python -m data.sft` (or point the config at your data)")
    train = load_dataset("json", data_files=cfg.train_file, split="train")
    val = load_dataset("json", data_files=cfg.val_file, split="train") if cfg.val_file else None
    keep = ["prompt", "completion"]
    for ds, name in ((train, cfg.train_file), (val, cfg.val_file)):
        if ds is not None and not set(keep) <= set(ds.column_names):
            raise ConfigError(f"{name}: expected prompt/completion records (columns {keep}), "
                              f"found {ds.column_names}")
    train = train.remove_columns([c for c in train.column_names if c not in keep])
    if val is not None:
        val = val.remove_columns([c for c in val.column_names if c not in keep])
    return train, val


def data_record(train_file: str, val_file: str | None, n_train: int, n_val: int) -> dict:
    """What run.json says about the data, including every training input for eval's leak check."""
    inputs = training_inputs(train_file)
    leaks = LeakGuard(ruler_inputs()).find_leaks((f"{train_file}#{i + 1}", t)
                                                 for i, t in enumerate(inputs))
    return {"train_file": str(train_file), "train_sha256": file_sha256(train_file),
            "val_file": str(val_file) if val_file else None, "val_sha256": file_sha256(val_file),
            "n_train": n_train, "n_val": n_val, "inputs": inputs,
            "ruler_leaks": [f"{lk.where}: {lk.input!r} ~ {lk.protected_id}" for lk in leaks]}


def build_trainer(cfg: SFTRunConfig, callbacks: list | None = None):
    """(trainer, tokenizer, base_info, data record, checkpoint to resume) — nothing trained yet."""
    import transformers
    from trl import SFTConfig, SFTTrainer

    from train.models import load_base

    out = Path(cfg.output_dir)
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    train_ds, val_ds = _load_datasets(cfg)
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision)
    data = data_record(cfg.train_file, cfg.val_file, len(train_ds), len(val_ds or []))
    warn_ruler_leaks(data)
    has_val = val_ds is not None and len(val_ds) > 0
    args = SFTConfig(completion_only_loss=True,
                     **trainer_args_kwargs(cfg, out, has_val, device, precision))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds,
                         eval_dataset=val_ds if has_val else None, processing_class=tokenizer,
                         peft_config=lora_config(cfg), callbacks=callbacks)
    base_info = dict(base_info, device=device, precision=precision)
    return trainer, tokenizer, base_info, data, resume


def run_sft(cfg: SFTRunConfig, callbacks: list | None = None) -> Path:
    """Train and save; returns the run folder."""
    trainer, tokenizer, base_info, data, resume = build_trainer(cfg, callbacks)
    out = Path(cfg.output_dir)
    if len(trainer.train_dataset) == 0:
        # TRL drops examples whose answer was truncated away; say so instead of a sampler error.
        raise ConfigError(f"{cfg.train_file}: no training example keeps any answer token within "
                          f"max_length={cfg.max_length}; raise max_length")
    has_val = trainer.eval_dataset is not None
    # Validation loss of the untouched base (LoRA B starts at zero), so every run records how
    # far training moved it; skipped on resume, where the base is no longer the starting point.
    initial_eval = trainer.evaluate() if has_val and not resume else {}
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    final_eval = trainer.evaluate() if has_val else {}
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        history = trainer.state.log_history
        metrics = {"train_loss": [r["loss"] for r in history if "loss" in r],
                   "eval_loss": [r["eval_loss"] for r in history if "eval_loss" in r],
                   "initial_eval_loss": initial_eval.get("eval_loss"),
                   "final_eval_loss": final_eval.get("eval_loss"),
                   "global_step": trainer.state.global_step,
                   "world_size": trainer.args.world_size,
                   "train_seconds": round(time.time() - t0, 1)}
        plot_curves(history, out / "loss_curve.png", ("loss", "eval_loss"),
                    f"SFT {cfg.model_name_or_path}")
        write_json_atomically(out / "run.json", run_record(
            stage="sft", run_id=new_run_id("sft", cfg), cfg=cfg, base_info=base_info, data=data,
            metrics=metrics, extra={"resumed_from": resume}))
    return out


def main(argv: list[str] | None = None) -> int:
    return stage_main(SFTRunConfig, run_sft, __doc__, argv, "run.json, loss_curve.png")


if __name__ == "__main__":
    sys.exit(main())
