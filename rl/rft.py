"""Rejection-sampling fine-tuning: `python -m train.rft --config configs/rft.yaml [--key value]`
(`python -m rl.rft` is the same command).

Each round samples `samples_per_task` answers per SFT training task from the current adapter
(round 1: `adapter_init`, an SFT run; later rounds: the previous round's adapter) plus its greedy
answer, scores them all with rl.reward (spec gate, then the judge's case quality against the
task's gold), and keeps a task's best sample when it passes the gate and beats the greedy answer
by `margin`. It then trains a fresh LoRA with SFT (the same trainer and keys as train.sft) on the
gold records (`mix_gold`) plus the kept samples. rft.json logs per round how many tasks improved;
the last round's adapter is the run folder, so eval.run and export.fmadapter take it unchanged.
A finished round is not redone when the command is run again.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from data.contract import planner_messages, render_assistant
from rl.common import JudgeFields, build_judge, check_judge, confirm_spend, load_tasks
from rl.reward import PlannerReward, completion_text, judge_cost_estimate
from train.common import stage_main
from train.config import ConfigError
from train.sft import SFTRunConfig, run_sft


@dataclass
class RFTRunConfig(JudgeFields, SFTRunConfig):
    adapter_init: str = field(default="runs/sft", metadata={
        "help": "the SFT run that samples round 1 (its base is model_name_or_path)"})
    output_dir: str = "runs/rft"
    rounds: int = field(default=1, metadata={"help": "sample -> keep -> SFT rounds"})
    samples_per_task: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    guided: bool = field(default=False, metadata={
        "help": "sample (and decode greedily) under the contract's JSON schema, as on device"})
    max_new_tokens: int = 640
    sample_batch_size: int = field(default=8, metadata={"help": "tasks per generate call"})
    margin: float = field(default=0.05, metadata={
        "help": "a sample is kept when its quality beats the greedy answer's by this much"})
    mix_gold: bool = field(default=True, metadata={
        "help": "train each round on the gold records plus the kept samples (false: kept only)"})


def check_config(cfg: RFTRunConfig) -> None:
    check_judge(cfg)
    if cfg.rounds < 1 or cfg.samples_per_task < 1:
        raise ConfigError("rounds and samples_per_task must be >= 1")
    if not 0.0 <= cfg.margin <= 1.0:
        raise ConfigError(f"margin must be within 0..1 (a case-quality gap), got {cfg.margin}")
    if not (Path(cfg.adapter_init) / "adapter_config.json").exists():
        raise FileNotFoundError(f"adapter_init {cfg.adapter_init}: not a PEFT adapter folder "
                                "(train one with python -m train.sft)")


def sample_round(cfg: RFTRunConfig, adapter: str, tasks, seed: int) -> tuple[list, list]:
    """(greedy text per task, [sample texts] per task) from base + adapter."""
    import torch

    from eval.generate import generate_texts, render_prompt
    from train.models import load_with_adapter, pick_device, pick_precision

    device = pick_device(cfg.device)
    model, tokenizer, _ = load_with_adapter(cfg.model_name_or_path, adapter, device=device,
                                            precision=pick_precision(device, cfg.precision),
                                            revision=cfg.model_revision)
    prompts = [render_prompt(tokenizer, t["task_input"]) for t in tasks]
    with torch.inference_mode():
        greedy = generate_texts(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.sample_batch_size, progress=cfg.progress,
                                guided=cfg.guided)
        samples = generate_texts(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                 batch_size=cfg.sample_batch_size, do_sample=True,
                                 temperature=cfg.temperature, top_p=cfg.top_p,
                                 num_return_sequences=cfg.samples_per_task, seed=seed,
                                 progress=cfg.progress, guided=cfg.guided)
    del model
    return [g[0] for g in greedy], samples


def keep_best(reward: PlannerReward, tasks, greedy: list[str], samples: list[list[str]],
              margin: float) -> tuple[list[dict], dict]:
    """The SFT records of the kept samples and the round's summary."""
    from data.contract import parse_assistant
    flat = [(i, text) for i, texts in enumerate(samples) for text in [greedy[i], *texts]]
    scores = reward([None] * len(flat), [t for _, t in flat],
                    gold=[tasks[i]["gold"] for i, _ in flat],
                    task_input=[tasks[i]["task_input"] for i, _ in flat])
    kept, per = [], 1 + len(samples[0])       # greedy first, then the samples
    greedy_q, best_q = [], []
    for i, task in enumerate(tasks):
        block = scores[i * per:(i + 1) * per]
        g, best = block[0], max(range(1, per), key=lambda j: block[j])
        greedy_q.append(g)
        best_q.append(block[best])
        if block[best] > reward.fail_reward and block[best] >= g + margin:
            answer = parse_assistant(completion_text(flat[i * per + best][1])).result
            kept.append({"id": f"rft-{i}", "prompt": planner_messages(task["task_input"]),
                         "completion": [{"role": "assistant",
                                         "content": render_assistant(answer)}],
                         "quality": block[best], "greedy_quality": g})
    n = len(tasks)
    return kept, {"tasks": n, "improved": len(kept),
                  "greedy_quality_mean": sum(greedy_q) / n,
                  "best_sample_quality_mean": sum(best_q) / n,
                  "kept_quality_mean": (sum(k["quality"] for k in kept) / len(kept)
                                        if kept else None),
                  "reward_stats": reward.stats.to_dict()}


def write_round_data(cfg: RFTRunConfig, kept: list[dict], path: Path) -> int:
    rows = []
    if cfg.mix_gold:
        with open(cfg.train_file, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    rows += [{k: v for k, v in r.items() if k in ("id", "prompt", "completion")} for r in kept]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    tmp.replace(path)
    return len(rows)


def run_rft(cfg: RFTRunConfig, callbacks: list | None = None) -> Path:
    check_config(cfg)
    out = Path(cfg.output_dir)
    tasks = list(load_tasks(cfg))
    if cfg.judge == "anthropic":
        per_round = len(tasks) * (1 + cfg.samples_per_task)
        confirm_spend(cfg, judge_cost_estimate(per_round * cfg.rounds, cfg.judge_model))
    judge = build_judge(cfg)
    log_path = out / "rft.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {"rounds": []}
    student = cfg.adapter_init
    for r in range(1, cfg.rounds + 1):
        round_dir = out / "rounds" / f"round-{r}"
        done = [x for x in log["rounds"] if x["round"] == r]
        if done and (round_dir / "run.json").exists():
            student = str(round_dir)            # finished earlier: resume after it
            continue
        reward = PlannerReward(judge, cfg.fail_reward)
        greedy, samples = sample_round(cfg, student, tasks, seed=cfg.seed + r)
        kept, summary = keep_best(reward, tasks, greedy, samples, cfg.margin)
        n_rows = write_round_data(cfg, kept, round_dir / "data" / "train.jsonl")
        print(f"round {r}: {summary['improved']}/{summary['tasks']} tasks improved on the greedy "
              f"answer by >= {cfg.margin}; SFT on {n_rows} records", file=sys.stderr)
        sft_cfg = SFTRunConfig(**{f.name: getattr(cfg, f.name)
                                  for f in dataclasses.fields(SFTRunConfig)})
        sft_cfg.train_file = str(round_dir / "data" / "train.jsonl")
        sft_cfg.output_dir = str(round_dir)
        sft_cfg.resume_from_checkpoint = None
        run_sft(sft_cfg, callbacks)
        log["rounds"] = [x for x in log["rounds"] if x["round"] != r] + [
            {"round": r, "student": student, "records": n_rows, **summary}]
        write_json_atomically(log_path, log)
        student = str(round_dir)
    finish(out, Path(student), cfg, log, judge.name)
    if hasattr(judge, "close"):
        judge.close()
    return out


def finish(out: Path, last: Path, cfg: RFTRunConfig, log: dict, judge_name: str) -> None:
    """The last round's adapter becomes the run folder, its run.json marked stage rft."""
    for item in last.iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    run = json.loads((last / "run.json").read_text(encoding="utf-8"))
    run["stage"] = "rft"
    run["config"] = dataclasses.asdict(cfg)
    run["started_from"] = {"run_dir": cfg.adapter_init}
    run["metrics"]["rft"] = {"judge": judge_name, "rounds": log["rounds"]}
    write_json_atomically(out / "run.json", run)


def main(argv: list[str] | None = None) -> int:
    return stage_main(RFTRunConfig, run_rft, __doc__, argv, "run.json, rft.json, rounds/")


if __name__ == "__main__":
    sys.exit(main())
