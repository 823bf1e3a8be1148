"""LoRA ORPO: `python -m train.orpo --config configs/orpo.yaml [--any_key value ...]`.

TRL's ORPO trainer (in TRL 1.16 it exists only as trl.experimental.orpo; this is the one module
that imports it, so it can be swapped) with a PEFT LoRA, on preference pairs from
`python -m prefs.build`. The prompt is the planner's system + user messages rendered by the same
chat template as SFT. Start from the base (a fresh LoRA, Apple's shape by default) or continue an
SFT adapter with `adapter_init: RUN_DIR` (loaded trainable and trained further; its LoRA shape
wins over the lora_* keys). The learning rate defaults to 5e-5: TRL's ORPO default of 1e-6 is
meant for full fine-tuning and barely moves a LoRA.

Logged per step: loss, nll_loss, rewards/{chosen,rejected,accuracies,margins}, log_odds_ratio,
log_odds_chosen (and eval_ versions each epoch). The output folder holds the adapter
(safetensors), run.json (stage "orpo", the SFT run it started from, every training input for
eval's leak check, and the held-out log-probability margin before and after training),
loss_curve.png and preference_curves.png. Checkpoints: `--resume_from_checkpoint latest|PATH`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from train.common import (BackendFields, TrainingFields, checkpoint_to_resume, lora_config,
                          new_run_id, one_progress_bar, quiet_datasets, resolve_runtime,
                          run_record, stage_main, trainer_args_kwargs, warn_ruler_leaks)
from train.preference import (attach_adapter_init, load_pair_datasets, mean_or_none,
                              orpo_metrics, plot_orpo_curves, preference_margins)
from train.sft import data_record



@dataclass
class ORPORunConfig(BackendFields, TrainingFields):
    adapter_init: str | None = field(default=None, metadata={
        "help": "SFT run folder whose adapter ORPO continues (None: a fresh LoRA on the base)"})
    train_file: str = field(default="runs/data/prefs/train.jsonl",
                            metadata={"help": "preference JSONL from python -m prefs.build"})
    val_file: str | None = "runs/data/prefs/val.jsonl"
    output_dir: str = "runs/orpo"
    beta: float = field(default=0.1, metadata={"help": "weight of ORPO's odds-ratio term"})
    learning_rate: float = field(default=5e-5, metadata={
        "help": "LoRA-sized; TRL's ORPO default 1e-6 barely moves a LoRA"})
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    nll_on_completion_only: bool = field(default=True, metadata={
        "help": "ORPO's SFT term on the answer only, as in SFT and the ORPO paper (TRL's own "
                "covers the prompt too, which for a long system prompt dominates the loss)"})
    measure_margins: bool = field(default=True, metadata={
        "help": "record the validation pairs' log-prob margin before and after training"})


def orpo_trainer_class(nll_on_completion_only: bool):
    """TRL's ORPOTrainer, or a subclass whose NLL term skips the prompt tokens."""
    import torch.nn.functional as F
    from trl.experimental.orpo import ORPOTrainer

    if not nll_on_completion_only:
        return ORPOTrainer

    class CompletionNLLORPOTrainer(ORPOTrainer):
        def concatenated_forward(self, model, batch):
            out = list(super().concatenated_forward(model, batch))
            logits = out[2]                      # chosen rows; position t predicts token t + 1
            labels = batch["chosen_labels"][:, 1:].to(logits.device)   # prompt is -100 here
            if labels.shape[1] < logits.shape[1]:
                labels = F.pad(labels, (0, logits.shape[1] - labels.shape[1]), value=-100)
            out[4] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                     ignore_index=-100)
            return tuple(out)

    return CompletionNLLORPOTrainer


def run_orpo(cfg: ORPORunConfig, callbacks: list | None = None) -> Path:
    """Train and save; returns the run folder."""
    if cfg.backend == "mlx":
        from train.mlx import require_mlx
        require_mlx()
        from train.mlx.trainer import run_orpo_mlx
        return run_orpo_mlx(cfg, callbacks)
    import transformers
    from trl.experimental.orpo import ORPOConfig

    from train.models import load_base

    out = Path(cfg.output_dir)
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    quiet_datasets()
    train_ds, val_ds = load_pair_datasets(cfg)
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision, kv_quant=cfg.kv_quant)
    started_from = None
    if cfg.adapter_init:
        model, started_from = attach_adapter_init(cfg, model, base_info)
    data = data_record(cfg.train_file, cfg.val_file, len(train_ds), len(val_ds or []))
    warn_ruler_leaks(data)
    has_val = val_ds is not None and len(val_ds) > 0
    val_records = [dict(r) for r in val_ds] if has_val else []
    margin_before = None
    if cfg.measure_margins and val_records:
        model.to(device)
        margin_before = mean_or_none(preference_margins(model, tokenizer, val_records,
                                                 cfg.per_device_eval_batch_size))
    args = ORPOConfig(beta=cfg.beta, remove_unused_columns=False,
                      **trainer_args_kwargs(cfg, out, has_val, device, precision))
    trainer = orpo_trainer_class(cfg.nll_on_completion_only)(
        model=model, args=args, train_dataset=train_ds,
        eval_dataset=val_ds if has_val else None, processing_class=tokenizer,
        peft_config=None if cfg.adapter_init else lora_config(cfg), callbacks=callbacks)
    one_progress_bar(trainer, "ORPO")
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    final_eval = {}
    if has_val:
        # The last epoch's evaluation already measured the final weights; don't repeat it.
        last = [r for r in trainer.state.log_history if "eval_loss" in r]
        final_eval = (last[-1] if last and last[-1].get("step") == trainer.state.global_step
                      else trainer.evaluate())
    margin_after = None
    if cfg.measure_margins and val_records:
        margin_after = mean_or_none(preference_margins(trainer.model, tokenizer, val_records,
                                                cfg.per_device_eval_batch_size))
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out / "tokenizer"))
        history = trainer.state.log_history
        metrics = {**orpo_metrics(history, final_eval),
                   "val_logp_margin_before": margin_before, "val_logp_margin_after": margin_after,
                   "global_step": trainer.state.global_step,
                   "train_seconds": round(time.time() - t0, 1), "device": device,
                   "precision": precision}
        plot_orpo_curves(history, out, f"ORPO {cfg.model_name_or_path}")
        write_json_atomically(out / "run.json", run_record(
            stage="orpo", run_id=new_run_id("orpo", cfg), cfg=cfg, base_info=base_info,
            data=data, metrics=metrics,
            extra={"resumed_from": resume, "started_from": started_from}))
    return out


def main(argv: list[str] | None = None) -> int:
    return stage_main(ORPORunConfig, run_orpo, __doc__, argv,
                      "run.json, loss_curve.png, preference_curves.png")


if __name__ == "__main__":
    sys.exit(main())
