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
from typing import Literal

from data.appendlog import write_json_atomically
from data.corpus import ruler_inputs
from data.formats import FormatError, load_rows, prompt_mismatches, row_inputs
from data.leak import LeakGuard
from train.common import (TrainingFields, checkpoint_to_resume, file_sha256, lora_config,
                          new_run_id, plot_curves, resolve_runtime, run_record, stage_main,
                          trainer_args_kwargs, training_inputs, warn_ruler_leaks)
from train.config import ConfigError


@dataclass
class SFTRunConfig(TrainingFields):
    train_file: str = field(default="runs/data/sft/train.jsonl",
                            metadata={"help": "JSONL file or datasets folder (see data_format)"})
    data_format: Literal["auto", "prompt_completion", "apple", "messages"] = field(
        default="auto", metadata={"help": "auto | prompt_completion (python -m data.sft) | apple "
                                          "(toolkit message arrays) | messages (HF chat)"})
    packing: bool = field(default=False, metadata={
        "help": "padding-free packing: sequences concatenated, position ids reset per sequence"})


def _load_datasets(cfg):
    """(train, val, train rows): any supported format converted to prompt/completion rows."""
    from datasets import Dataset

    for name in ("train_file", "val_file"):
        p = getattr(cfg, name)
        if p and not Path(p).exists():
            raise FileNotFoundError(f"{name} {p} does not exist; build it with "
                                    "`python -m data.sft` (or point the config at your data)")
    try:
        rows, _ = load_rows(cfg.train_file, cfg.data_format)
        val_rows = load_rows(cfg.val_file, cfg.data_format)[0] if cfg.val_file else None
    except FormatError as e:
        raise ConfigError(str(e)) from None
    strip = lambda rs: [{"prompt": r["prompt"], "completion": r["completion"]} for r in rs]
    train = Dataset.from_list(strip(rows))
    val = Dataset.from_list(strip(val_rows)) if val_rows else None
    return train, val, rows


def data_record(train_file: str, val_file: str | None, n_train: int, n_val: int) -> dict:
    """What run.json says about a prompt/completion or preference file (ORPO and train.prefs),
    including every training input for eval's leak check."""
    inputs = training_inputs(train_file)
    leaks = LeakGuard(ruler_inputs()).find_leaks((f"{train_file}#{i + 1}", t)
                                                 for i, t in enumerate(inputs))
    return {"train_file": str(train_file), "train_sha256": file_sha256(train_file),
            "val_file": str(val_file) if val_file else None, "val_sha256": file_sha256(val_file),
            "n_train": n_train, "n_val": n_val, "inputs": inputs,
            "ruler_leaks": [f"{lk.where}: {lk.input!r} ~ {lk.protected_id}" for lk in leaks]}


def sft_data_record(train_file: str, val_file: str | None, rows: list[dict], n_val: int) -> dict:
    """data_record for SFT rows of any format (data.formats): the same leak guard over the
    converted rows' inputs, with file:line locations, plus the system prompt check."""
    inputs = row_inputs(rows)
    leaks = LeakGuard(ruler_inputs()).find_leaks((r["where"], t) for r, t in zip(rows, inputs))
    return {"train_file": str(train_file), "train_sha256": file_sha256(train_file),
            "val_file": str(val_file) if val_file else None, "val_sha256": file_sha256(val_file),
            "n_train": len(rows), "n_val": n_val, "inputs": inputs,
            "ruler_leaks": [f"{lk.where}: {lk.input!r} ~ {lk.protected_id}" for lk in leaks],
            "prompt_mismatches": prompt_mismatches(rows)}


def warn_prompt_mismatches(data: dict) -> None:
    if data["prompt_mismatches"]:
        shown = data["prompt_mismatches"][:5]
        print(f"WARNING: {len(data['prompt_mismatches'])} training row(s) do not use the "
              "contract's planner system prompt, which export and eval use:\n  "
              + "\n  ".join(shown), file=sys.stderr)


def build_trainer(cfg: SFTRunConfig, callbacks: list | None = None):
    """(trainer, tokenizer, base_info, data record, checkpoint to resume) — nothing trained yet."""
    import transformers
    from trl import SFTConfig, SFTTrainer

    from train.models import load_base

    out = Path(cfg.output_dir)
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    train_ds, val_ds, rows = _load_datasets(cfg)
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision)
    data = sft_data_record(cfg.train_file, cfg.val_file, rows, len(val_ds or []))
    warn_ruler_leaks(data)
    warn_prompt_mismatches(data)
    has_val = val_ds is not None and len(val_ds) > 0
    # Packing: TRL's best-fit-decreasing packing is padding-free (no pad tokens; position ids
    # restart at 0 for each sequence so RoPE sees each example as if alone); the completion
    # mask is packed with the tokens, so the loss still covers only the answers.
    pack = dict(packing=True, packing_strategy="bfd", padding_free=True) if cfg.packing else {}
    args = SFTConfig(completion_only_loss=True, **pack,
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
