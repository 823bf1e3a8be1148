"""LoRA preference training, one method per config: `python -m train.prefs --config
configs/dpo.yaml [--method orpo|dpo|ipo|simpo|kto] [--any_key value ...]`.

Every method reads the same pair files (`python -m prefs.build`: prompt = the planner's system +
user messages, chosen / rejected = one assistant message), starts from the base or continues an
SFT adapter (`adapter_init`), and writes the same run folder as SFT and ORPO (adapter
safetensors, run.json with every training input for eval's leak check and the held-out
log-probability margin before and after, loss_curve.png, preference_curves.png), so
`python -m eval.run` and `python -m export.fmadapter` take any of them unchanged.

What each method optimises (TRL 1.16 trainers; `beta` means something different in each):
- orpo   train.orpo: NLL on the chosen answer plus beta x log odds-ratio chosen vs rejected;
         no reference model. `python -m train.orpo` is the same run.
- dpo    DPOTrainer, sigmoid loss: -log sigmoid(beta x (policy - reference) log-ratio margin).
- ipo    DPOTrainer, IPO loss: (margin - 1/(2 beta))^2, a squared loss that does not push the
         margin without bound when pairs are easy.
- simpo  CPOTrainer (trl.experimental.cpo), SimPO loss: length-normalised log-probabilities, no
         reference model, target reward margin `simpo_gamma`.
- kto    KTOTrainer: each pair becomes one desirable (chosen) and one undesirable (rejected)
         answer; identical answers repeated across a task's pairs are kept once.
For dpo, ipo and kto the reference is the policy at the start: the SFT adapter when
`adapter_init` is set (a frozen copy of it), else the base with the LoRA switched off.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from train.common import (TrainingFields, checkpoint_to_resume, lora_config, new_run_id,
                          one_progress_bar, plot_curves, quiet_datasets, resolve_runtime,
                          run_record, stage_main, trainer_args_kwargs, warn_ruler_leaks)
from train.config import ConfigError
from train.preference import (attach_adapter_init, load_pair_datasets, mean_or_none,
                              preference_margins)
from train.sft import data_record

METHODS = ("orpo", "dpo", "ipo", "simpo", "kto")
# beta's usual starting point per method (SimPO's beta scales length-normalised log-probs).
DEFAULT_BETA = {"orpo": 0.1, "dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "kto": 0.1}
CURVE_KEYS = ("rewards/margins", "rewards/accuracies", "eval_rewards/margins",
              "eval_rewards/accuracies", "kl")


@dataclass
class PrefsRunConfig(TrainingFields):
    method: str = field(default="dpo", metadata={"help": "orpo | dpo | ipo | simpo | kto"})
    adapter_init: str | None = field(default=None, metadata={
        "help": "SFT run folder whose adapter training continues (None: a fresh LoRA)"})
    train_file: str = field(default="runs/data/prefs/train.jsonl",
                            metadata={"help": "preference JSONL from python -m prefs.build"})
    val_file: str | None = "runs/data/prefs/val.jsonl"
    output_dir: str = "runs/prefs"
    beta: float | None = field(default=None, metadata={
        "help": "the method's beta (None: orpo/dpo/ipo/kto 0.1, simpo 2.0)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "LoRA-sized"})
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    simpo_gamma: float = field(default=0.5, metadata={
        "help": "simpo: target reward margin (TRL's CPO simpo_gamma)"})
    kto_desirable_weight: float = field(default=1.0, metadata={"help": "kto: chosen weight"})
    kto_undesirable_weight: float = field(default=1.0, metadata={"help": "kto: rejected weight"})
    nll_on_completion_only: bool = field(default=True, metadata={
        "help": "orpo: its NLL term on the answer only (see train.orpo)"})
    measure_margins: bool = field(default=True, metadata={
        "help": "record the validation pairs' log-prob margin before and after training"})

    def resolved_beta(self) -> float:
        return DEFAULT_BETA[self.method] if self.beta is None else self.beta


def check_config(cfg: PrefsRunConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    if cfg.beta is not None and not (math.isfinite(cfg.beta) and cfg.beta > 0):
        raise ConfigError(f"beta must be a positive number, got {cfg.beta}")
    if cfg.method == "kto" and cfg.per_device_train_batch_size < 2:
        raise ConfigError("kto: per_device_train_batch_size must be >= 2 (KTO estimates its KL "
                          "term from mismatched answers within a batch)")


def unpaired(ds):
    """Preference pairs as KTO's unpaired rows (prompt, completion, label), each answer once."""
    from datasets import Dataset

    seen, rows = set(), []
    for rec in ds:
        for side, label in (("chosen", True), ("rejected", False)):
            key = (repr(rec["prompt"]), repr(rec[side]), label)
            if key not in seen:
                seen.add(key)
                rows.append({"prompt": rec["prompt"], "completion": rec[side], "label": label})
    return Dataset.from_list(rows)


def make_trainer(cfg: PrefsRunConfig, model, tokenizer, train_ds, val_ds, common: dict,
                 callbacks):
    """The TRL trainer for cfg.method (not orpo), built on the shared TrainingArguments."""
    peft_config = None if cfg.adapter_init else lora_config(cfg)
    beta = cfg.resolved_beta()
    if cfg.method in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer
        args = DPOConfig(beta=beta, loss_type=["sigmoid" if cfg.method == "dpo" else "ipo"],
                         **common)
        cls = DPOTrainer
    elif cfg.method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        # cpo_alpha = 0 drops CPO's NLL term, which is what makes it SimPO.
        args = CPOConfig(beta=beta, loss_type="simpo", cpo_alpha=0.0,
                         simpo_gamma=cfg.simpo_gamma, remove_unused_columns=False, **common)
        cls = CPOTrainer
    else:
        from trl import KTOConfig, KTOTrainer
        args = KTOConfig(beta=beta, desirable_weight=cfg.kto_desirable_weight,
                         undesirable_weight=cfg.kto_undesirable_weight, **common)
        cls = KTOTrainer
        train_ds = unpaired(train_ds)
        val_ds = unpaired(val_ds) if val_ds is not None else None
    quiet_datasets()
    trainer = cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                  processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    one_progress_bar(trainer, cfg.method.upper())
    return trainer


def run_prefs(cfg: PrefsRunConfig, callbacks: list | None = None) -> Path:
    """Train with cfg.method and save; returns the run folder."""
    check_config(cfg)
    if cfg.method == "orpo":
        from train.orpo import ORPORunConfig, run_orpo
        # Keys train.prefs does not have (backend, kv_quant) keep ORPO's defaults.
        orpo_cfg = ORPORunConfig(**{f.name: getattr(cfg, f.name)
                                    for f in dataclasses.fields(ORPORunConfig)
                                    if hasattr(cfg, f.name)})
        orpo_cfg.beta = cfg.resolved_beta()
        return run_orpo(orpo_cfg, callbacks)

    import transformers

    from train.models import load_base

    out = Path(cfg.output_dir)
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    train_ds, val_ds = load_pair_datasets(cfg)
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision)
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
    common = trainer_args_kwargs(cfg, out, has_val, device, precision)
    trainer = make_trainer(cfg, model, tokenizer, train_ds, val_ds if has_val else None, common,
                           callbacks)
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    final_eval = {}
    if has_val:
        last = [r for r in trainer.state.log_history if "eval_loss" in r]
        final_eval = (last[-1] if last and last[-1].get("step") == trainer.state.global_step
                      else trainer.evaluate())
    policy = trainer.model
    if "ref" in getattr(policy, "peft_config", {}):
        policy.delete_adapter("ref")     # TRL's frozen reference copy: not part of the result
    margin_after = None
    if cfg.measure_margins and val_records:
        margin_after = mean_or_none(preference_margins(policy, tokenizer, val_records,
                                                       cfg.per_device_eval_batch_size))
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out / "tokenizer"))
        history = trainer.state.log_history
        losses = [r["loss"] for r in history if "loss" in r]
        logged = sorted({k for r in history for k in r
                         if k.startswith(("rewards/", "logps/", "kl"))})
        metrics = {"method": cfg.method, "beta": cfg.resolved_beta(), "train_loss": losses,
                   "eval_loss": [r["eval_loss"] for r in history if "eval_loss" in r],
                   "final_eval_loss": final_eval.get("eval_loss"),
                   "nonfinite_losses": sum(not math.isfinite(x) for x in losses),
                   **{k: [r[k] for r in history if k in r] for k in logged},
                   **{f"final_eval_{k}": final_eval.get(f"eval_{k}") for k in logged},
                   "val_logp_margin_before": margin_before, "val_logp_margin_after": margin_after,
                   "global_step": trainer.state.global_step,
                   "train_seconds": round(time.time() - t0, 1), "device": device,
                   "precision": precision}
        title = f"{cfg.method.upper()} {cfg.model_name_or_path}"
        plot_curves(history, out / "loss_curve.png", ("loss", "eval_loss"), title)
        plot_curves(history, out / "preference_curves.png", CURVE_KEYS,
                    f"{title}: preference metrics")
        write_json_atomically(out / "run.json", run_record(
            stage=cfg.method, run_id=new_run_id(cfg.method, cfg), cfg=cfg, base_info=base_info,
            data=data, metrics=metrics,
            extra={"resumed_from": resume, "started_from": started_from}))
    return out


def main(argv: list[str] | None = None) -> int:
    return stage_main(PrefsRunConfig, run_prefs, __doc__, argv,
                      "run.json, loss_curve.png, preference_curves.png")


if __name__ == "__main__":
    sys.exit(main())
