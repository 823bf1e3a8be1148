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

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from train.common import (TrainingFields, checkpoint_to_resume, file_sha256, lora_config,
                          new_run_id, plot_curves, resolve_runtime, run_record, stage_main,
                          trainer_args_kwargs, warn_ruler_leaks)
from train.config import ConfigError
from train.sft import data_record

PREFERENCE_KEYS = ("rewards/accuracies", "rewards/margins", "log_odds_ratio", "log_odds_chosen",
                   "nll_loss")


@dataclass
class ORPORunConfig(TrainingFields):
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


def _load_datasets(cfg):
    from datasets import load_dataset

    for name in ("train_file", "val_file"):
        p = getattr(cfg, name)
        if p and not Path(p).exists():
            raise FileNotFoundError(f"{name} {p} does not exist; build it with "
                                    "`python -m prefs.build` (or point the config at your pairs)")
    train = load_dataset("json", data_files=cfg.train_file, split="train")
    val = load_dataset("json", data_files=cfg.val_file, split="train") if cfg.val_file else None
    keep = ["prompt", "chosen", "rejected"]
    for ds, name in ((train, cfg.train_file), (val, cfg.val_file)):
        if ds is not None and not set(keep) <= set(ds.column_names):
            raise ConfigError(f"{name}: expected preference records (columns {keep}), found "
                              f"{ds.column_names}")
    train = train.remove_columns([c for c in train.column_names if c not in keep])
    if val is not None:
        val = val.remove_columns([c for c in val.column_names if c not in keep])
    return train, val


def completion_logps(model, tokenizer, prompts: list[list[dict]], completions: list[list[dict]],
                     batch_size: int = 4) -> list[float]:
    """Mean log-probability per completion token (what ORPO's odds ratio is built on), with the
    prompt and completion rendered by the tokenizer's chat template as in training."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out: list[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            ps, cs = prompts[start:start + batch_size], completions[start:start + batch_size]
            prompt_texts = [tokenizer.apply_chat_template(p, tokenize=False,
                                                          add_generation_prompt=True) for p in ps]
            full_texts = [tokenizer.apply_chat_template(p + c, tokenize=False)
                          for p, c in zip(ps, cs)]
            n_prompt = [len(tokenizer(t, add_special_tokens=False)["input_ids"])
                        for t in prompt_texts]
            enc = tokenizer(full_texts, return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad():
                logits = model(**enc).logits[:, :-1].float()
            labels = enc["input_ids"][:, 1:]
            logps = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            pos = torch.arange(labels.shape[1], device=device).unsqueeze(0)
            mask = (pos >= torch.tensor(n_prompt, device=device).unsqueeze(1) - 1) \
                & enc["attention_mask"][:, 1:].bool()
            out += ((logps * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def preference_margins(model, tokenizer, records: list[dict], batch_size: int = 4) -> list[float]:
    """Per pair: mean completion log-prob of the chosen answer minus that of the rejected one."""
    prompts = [r["prompt"] for r in records]
    chosen = completion_logps(model, tokenizer, prompts, [r["chosen"] for r in records],
                              batch_size)
    rejected = completion_logps(model, tokenizer, prompts, [r["rejected"] for r in records],
                                batch_size)
    return [c - r for c, r in zip(chosen, rejected)]


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


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _attach_adapter_init(cfg: ORPORunConfig, model, base_info: dict):
    """Load the SFT adapter trainable; returns (model, record of the run it came from)."""
    from peft import PeftModel

    from train.models import read_run

    path = Path(cfg.adapter_init)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"adapter_init {path}: not a PEFT adapter folder "
                                "(adapter_config.json is missing)")
    run = read_run(path) if (path / "run.json").exists() else {}
    trained_on = (run.get("base_model") or {}).get("identity")
    if trained_on and trained_on != base_info["identity"]:
        raise ConfigError(
            f"adapter_init {path} was trained on base {run['base_model'].get('name_or_path')!r} "
            f"(identity {trained_on[:12]}), but this run's base {cfg.model_name_or_path!r} has "
            f"identity {base_info['identity'][:12]}; an adapter only fits the base it was "
            "trained on")
    model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
    peft_cfg = model.peft_config["default"]
    # The adapter's own shape is what gets trained; record it as the resolved config.
    cfg.lora_r, cfg.lora_alpha = int(peft_cfg.r), int(peft_cfg.lora_alpha)
    cfg.lora_dropout = float(peft_cfg.lora_dropout)
    targets = set(peft_cfg.target_modules)      # PEFT keeps a set: reuse the configured order
    cfg.lora_target_modules = ([m for m in cfg.lora_target_modules if m in targets]
                               + sorted(targets - set(cfg.lora_target_modules)))
    return model, {"run_dir": str(path), "run_id": run.get("run_id"), "stage": run.get("stage"),
                   "adapter_sha256": file_sha256(path / "adapter_model.safetensors")}


def run_orpo(cfg: ORPORunConfig, callbacks: list | None = None) -> Path:
    """Train and save; returns the run folder."""
    import transformers
    from trl.experimental.orpo import ORPOConfig

    from train.models import load_base

    out = Path(cfg.output_dir)
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    train_ds, val_ds = _load_datasets(cfg)
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision)
    started_from = None
    if cfg.adapter_init:
        model, started_from = _attach_adapter_init(cfg, model, base_info)
    data = data_record(cfg.train_file, cfg.val_file, len(train_ds), len(val_ds or []))
    warn_ruler_leaks(data)
    has_val = val_ds is not None and len(val_ds) > 0
    val_records = [dict(r) for r in val_ds] if has_val else []
    margin_before = None
    if cfg.measure_margins and val_records:
        model.to(device)
        margin_before = _mean(preference_margins(model, tokenizer, val_records,
                                                 cfg.per_device_eval_batch_size))
    args = ORPOConfig(beta=cfg.beta, remove_unused_columns=False,
                      **trainer_args_kwargs(cfg, out, has_val, device, precision))
    trainer = orpo_trainer_class(cfg.nll_on_completion_only)(
        model=model, args=args, train_dataset=train_ds,
        eval_dataset=val_ds if has_val else None, processing_class=tokenizer,
        peft_config=None if cfg.adapter_init else lora_config(cfg), callbacks=callbacks)
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
        margin_after = _mean(preference_margins(trainer.model, tokenizer, val_records,
                                                cfg.per_device_eval_batch_size))
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out / "tokenizer"))
        history = trainer.state.log_history
        losses = [r["loss"] for r in history if "loss" in r]
        metrics = {"train_loss": losses,
                   "eval_loss": [r["eval_loss"] for r in history if "eval_loss" in r],
                   "final_eval_loss": final_eval.get("eval_loss"),
                   "nonfinite_losses": sum(not math.isfinite(x) for x in losses),
                   **{key: [r[key] for r in history if key in r] for key in PREFERENCE_KEYS},
                   **{f"final_eval_{key}": final_eval.get(f"eval_{key}")
                      for key in PREFERENCE_KEYS},
                   "val_logp_margin_before": margin_before, "val_logp_margin_after": margin_after,
                   "global_step": trainer.state.global_step,
                   "train_seconds": round(time.time() - t0, 1), "device": device,
                   "precision": precision}
        plot_curves(history, out / "loss_curve.png", ("loss", "eval_loss"),
                    f"ORPO {cfg.model_name_or_path}")
        plot_curves(history, out / "preference_curves.png",
                    ("rewards/margins", "rewards/accuracies", "log_odds_ratio",
                     "eval_rewards/margins", "eval_rewards/accuracies"),
                    f"ORPO preference metrics {cfg.model_name_or_path}")
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
