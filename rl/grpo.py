"""Policy-gradient LoRA training with the project's judge as reward:
`python -m rl.grpo --config configs/grpo.yaml [--method grpo|rloo] [--any_key value ...]`
(`python -m train.grpo` is the same command).

Each step samples `num_generations` answers per training task from the current adapter, scores
them with rl.reward (spec gate, then the judge's case quality against the task's gold) and moves
the adapter toward the better ones: GRPO (TRL's GRPOTrainer, advantages normalised within each
task's group) or RLOO (TRL's RLOOTrainer, each answer's baseline is the mean of its siblings). It
starts from an SFT adapter (`adapter_init`) and writes the same run folder as every other stage,
so eval.run and export.fmadapter take it unchanged. With `judge: anthropic` the judge goes
through the cached, concurrency-limited client; the run prints the most it can cost first and
asks (or `confirm_spend: true`), and run.json records what it did cost.

`reward: discriminator` is adversarial distillation as the research ran it: instead of the judge,
a small discriminator (rl.discriminator) trained alongside on gold vs this policy's answers
scores each passing answer by how gold-like it looks; configs/adversarial.yaml.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from rl.common import JudgeFields, build_judge, check_judge, confirm_spend, load_tasks
from rl.reward import PlannerReward, judge_cost_estimate
from train.common import (TrainingFields, checkpoint_to_resume, lora_config, new_run_id,
                          one_progress_bar, plot_curves, quiet_datasets, resolve_runtime,
                          run_record, stage_main, trainer_args_kwargs, warn_ruler_leaks)
from train.config import ConfigError
from train.preference import attach_adapter_init
from train.sft import data_record

METHODS = ("grpo", "rloo")
REWARDS = ("judge", "discriminator")


@dataclass
class GRPORunConfig(JudgeFields, TrainingFields):
    method: str = field(default="grpo", metadata={"help": "grpo | rloo"})
    adapter_init: str | None = field(default="runs/sft", metadata={
        "help": "SFT run folder to start from (None: a fresh LoRA on the base)"})
    train_file: str = field(default="runs/data/sft/train.jsonl", metadata={
        "help": "the SFT prompt/completion JSONL: prompts to sample, completions as gold"})
    val_file: str | None = None
    output_dir: str = "runs/grpo"
    learning_rate: float = 1e-5
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    max_length: int = 1024
    num_generations: int = field(default=4, metadata={"help": "answers sampled per task"})
    max_completion_length: int = 640
    temperature: float = 1.0
    top_p: float = 1.0
    reward: str = field(default="judge", metadata={
        "help": "judge (spec gate + judge quality) | discriminator (adversarial distillation)"})
    discriminator_lr: float = 0.05
    discriminator_steps: int = field(default=2, metadata={
        "help": "discriminator updates per reward call (gold vs this batch's answers)"})
    beta: float = field(default=0.0, metadata={
        "help": "KL penalty to the start adapter (0: none, and no reference copy)"})
    guided: bool = field(default=False, metadata={
        "help": "sample under the contract's JSON schema (exactly 7 questions), as on device"})


def check_config(cfg: GRPORunConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    check_judge(cfg)
    if cfg.reward not in REWARDS:
        raise ConfigError(f"reward {cfg.reward!r}: choose one of {', '.join(REWARDS)}")
    if cfg.num_generations < 2:
        raise ConfigError("num_generations must be >= 2 (both methods compare an answer with "
                          "its siblings for the same task)")
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if per_step % cfg.num_generations:
        raise ConfigError(f"per_device_train_batch_size x gradient_accumulation_steps = "
                          f"{per_step} answers per step must be a multiple of "
                          f"num_generations = {cfg.num_generations}")
    if not (math.isfinite(cfg.beta) and cfg.beta >= 0):
        raise ConfigError(f"beta must be >= 0, got {cfg.beta}")


def planned_completions(cfg: GRPORunConfig, n_tasks: int) -> int:
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if cfg.max_steps > 0:
        return cfg.max_steps * per_step
    return math.ceil(cfg.num_train_epochs * n_tasks) * cfg.num_generations


def make_trainer(cfg, model, tokenizer, train_ds, reward, common: dict, callbacks):
    sampling = dict(num_generations=cfg.num_generations,
                    max_completion_length=cfg.max_completion_length,
                    temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta,
                    log_completions=False, **common)
    if cfg.method == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    quiet_datasets()
    trainer = Trainer(model=model, reward_funcs=[reward], args=Config(**sampling),
                      train_dataset=train_ds, processing_class=tokenizer,
                      peft_config=None if cfg.adapter_init else lora_config(cfg),
                      callbacks=callbacks)
    one_progress_bar(trainer, cfg.method.upper())
    if cfg.guided:
        from train.guided import guide_generate
        guide_generate(trainer.model, tokenizer)
    return trainer


def run_grpo(cfg: GRPORunConfig, callbacks: list | None = None) -> Path:
    check_config(cfg)
    import transformers

    from train.models import load_base

    out = Path(cfg.output_dir)
    device, precision = resolve_runtime(cfg.device, cfg.precision)
    resume = checkpoint_to_resume(out, cfg.resume_from_checkpoint)
    transformers.set_seed(cfg.seed)
    train_ds = load_tasks(cfg)
    data = data_record(cfg.train_file, None, len(train_ds), 0)
    warn_ruler_leaks(data)
    estimate, judge = None, None
    if cfg.reward == "discriminator":
        from rl.discriminator import Discriminator, DiscriminatorReward
        reward = DiscriminatorReward(Discriminator(cfg.discriminator_lr, cfg.discriminator_steps,
                                                   cfg.seed), cfg.fail_reward)
        reward_name = "discriminator"
    else:
        if cfg.judge == "anthropic":
            estimate = judge_cost_estimate(planned_completions(cfg, len(train_ds)),
                                           cfg.judge_model)
            confirm_spend(cfg, estimate)
        judge = build_judge(cfg)
        reward = PlannerReward(judge, cfg.fail_reward)
        reward_name = judge.name
    model, tokenizer, base_info = load_base(cfg.model_name_or_path, revision=cfg.model_revision,
                                            precision=precision)
    started_from = None
    if cfg.adapter_init:
        model, started_from = attach_adapter_init(cfg, model, base_info)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common = trainer_args_kwargs(cfg, out, False, device, precision)
    common.pop("max_length")            # sampling trainers bound the completion instead
    trainer = make_trainer(cfg, model, tokenizer, train_ds, reward, common, callbacks)
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out / "tokenizer"))
        history = trainer.state.log_history
        losses = [r["loss"] for r in history if "loss" in r]
        rewards = [r["reward"] for r in history if "reward" in r]
        meter = getattr(getattr(judge, "client", None), "meter", None)
        disc = getattr(reward, "d", None)
        metrics = {"method": cfg.method, "train_loss": losses, "reward": rewards,
                   "reward_std": [r["reward_std"] for r in history if "reward_std" in r],
                   "nonfinite_losses": sum(not math.isfinite(x) for x in losses),
                   "reward_stats": reward.stats.to_dict(), "reward_source": reward_name,
                   "judge": None if judge is None else judge.name,
                   "discriminator": None if disc is None else disc.history,
                   "judge_estimate": estimate,
                   "judge_spent": None if meter is None else {
                       "requests": meter.requests, "cache_hits": meter.cache_hits,
                       "usage": dict(meter.usage), "cost": meter.cost_text()},
                   "global_step": trainer.state.global_step,
                   "train_seconds": round(time.time() - t0, 1), "device": device,
                   "precision": precision}
        title = f"{cfg.method.upper()} {cfg.model_name_or_path}"
        plot_curves(history, out / "loss_curve.png", ("loss",), title)
        plot_curves(history, out / "reward_curve.png", ("reward", "reward_std"),
                    f"{title}: reward ({reward_name})")
        write_json_atomically(out / "run.json", run_record(
            stage=cfg.method, run_id=new_run_id(cfg.method, cfg), cfg=cfg, base_info=base_info,
            data=data, metrics=metrics,
            extra={"resumed_from": resume, "started_from": started_from}))
    if judge is not None and hasattr(judge, "close"):
        judge.close()
    return out


def main(argv: list[str] | None = None) -> int:
    return stage_main(GRPORunConfig, run_grpo, __doc__, argv,
                      "run.json, loss_curve.png, reward_curve.png")


if __name__ == "__main__":
    sys.exit(main())
