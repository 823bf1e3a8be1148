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
from train.common import (BackendFields, TrainingFields, checkpoint_to_resume, lora_config,
                          new_run_id, one_progress_bar, plot_curves, quiet_datasets,
                          resolve_runtime, run_record, stage_main, trainer_args_kwargs,
                          warn_ruler_leaks)
from train.config import ConfigError
# Re-exported: the data helpers live in train.inputs, which both backends share.
from train.inputs import (data_record, field_map_of, load_sft_datasets,  # noqa: F401
                          sft_data_record, warn_prompt_mismatches)


@dataclass
class SFTRunConfig(BackendFields, TrainingFields):
    train_file: str = field(default="runs/data/sft/train.jsonl",
                            metadata={"help": "JSONL file or datasets folder (see data_format)"})
    data_format: Literal["auto", "prompt_completion", "apple", "messages"] = field(
        default="auto", metadata={"help": "auto | prompt_completion (python -m data.sft) | apple "
                                          "(toolkit message arrays) | messages (HF chat)"})
    input_pattern: str = field(default="", metadata={
        "help": "regex with one group: where the task sits in your prompt (leak guard, eval's "
                "prompt template); default: the documented rules (README, Bring your own data)"})
    field_map: str = field(default="", metadata={
        "help": "your answer's key names, CANONICAL=THEIRS,... (e.g. taskTitle=heading,"
                "questions[].title=ask); eval reads the adapter's answers with it"})
    packing: bool = field(default=False, metadata={
        "help": "padding-free packing: sequences concatenated, position ids reset per sequence"})


def build_trainer(cfg: SFTRunConfig, callbacks: list | None = None):
    """(trainer, tokenizer, base_info, data record, checkpoint to resume) — nothing trained yet."""
    import transformers
    from trl import SFTConfig, SFTTrainer

    from train.models import load_base

    out = Path(cfg.output_dir)
    field_map_of(cfg)   # refuse a bad field map before training, not at eval time
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    quiet_datasets()
    train_ds, val_ds, rows = load_sft_datasets(cfg)
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision, kv_quant=cfg.kv_quant)
    data = sft_data_record(cfg.train_file, cfg.val_file, rows, len(val_ds or []),
                           cfg.input_pattern or None)
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
    one_progress_bar(trainer, "SFT")
    base_info = dict(base_info, device=device, precision=precision)
    return trainer, tokenizer, base_info, data, resume


def run_sft(cfg: SFTRunConfig, callbacks: list | None = None) -> Path:
    """Train and save; returns the run folder."""
    if cfg.backend == "mlx":
        from train.mlx import require_mlx
        require_mlx()
        from train.mlx.trainer import run_sft_mlx
        return run_sft_mlx(cfg, callbacks)
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
