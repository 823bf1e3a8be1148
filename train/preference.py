"""What every preference stage shares (ORPO, DPO, IPO, SimPO, KTO): loading the pair files,
continuing an SFT adapter, and the held-out log-probability margin measured before and after."""
from __future__ import annotations

from pathlib import Path

from train.common import file_sha256
from train.config import ConfigError

PAIR_COLUMNS = ["prompt", "chosen", "rejected"]
# ORPO's logged preference metrics (run.json keeps a list per key), on either backend.
PREFERENCE_KEYS = ("rewards/accuracies", "rewards/margins", "log_odds_ratio", "log_odds_chosen",
                   "nll_loss")


def load_pair_datasets(cfg):
    from datasets import load_dataset

    for name in ("train_file", "val_file"):
        p = getattr(cfg, name)
        if p and not Path(p).exists():
            raise FileNotFoundError(f"{name} {p} does not exist; build it with "
                                    "`python -m prefs.build` (or point the config at your pairs)")
    train = load_dataset("json", data_files=cfg.train_file, split="train")
    val = load_dataset("json", data_files=cfg.val_file, split="train") if cfg.val_file else None
    keep = PAIR_COLUMNS
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


def orpo_metrics(history: list[dict], final_eval: dict) -> dict:
    """run.json metrics of an ORPO run read off its log history (either backend)."""
    import math
    losses = [r["loss"] for r in history if "loss" in r]
    return {"train_loss": losses,
            "eval_loss": [r["eval_loss"] for r in history if "eval_loss" in r],
            "final_eval_loss": final_eval.get("eval_loss"),
            "nonfinite_losses": sum(not math.isfinite(x) for x in losses),
            **{key: [r[key] for r in history if key in r] for key in PREFERENCE_KEYS},
            **{f"final_eval_{key}": final_eval.get(f"eval_{key}") for key in PREFERENCE_KEYS}}


def plot_orpo_curves(history: list[dict], out: Path, title: str) -> None:
    from train.common import plot_curves
    plot_curves(history, out / "loss_curve.png", ("loss", "eval_loss"), title)
    plot_curves(history, out / "preference_curves.png",
                ("rewards/margins", "rewards/accuracies", "log_odds_ratio",
                 "eval_rewards/margins", "eval_rewards/accuracies"), f"{title}: preference metrics")


def mean_or_none(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def adapter_init_run(cfg, base_info: dict) -> dict:
    """run.json of cfg.adapter_init (or {}), refused when it was trained on another base."""
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
    return run


def adopt_adapter_shape(cfg, r, alpha, dropout, target_modules) -> None:
    """The continued adapter's own shape is what gets trained: record it as the resolved config."""
    cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout = int(r), int(alpha), float(dropout or 0.0)
    targets = set(target_modules)      # PEFT keeps a set: reuse the configured order
    cfg.lora_target_modules = ([m for m in cfg.lora_target_modules if m in targets]
                               + sorted(targets - set(cfg.lora_target_modules)))


def started_from_record(cfg, run: dict, backend: str | None = None) -> dict:
    path = Path(cfg.adapter_init)
    record = {"run_dir": str(path), "run_id": run.get("run_id"), "stage": run.get("stage"),
              "adapter_sha256": file_sha256(path / "adapter_model.safetensors")}
    if backend:
        record["backend"] = backend
    return record


def attach_adapter_init(cfg, model, base_info: dict):
    """Load the SFT adapter trainable; returns (model, record of the run it came from)."""
    from peft import PeftModel

    run = adapter_init_run(cfg, base_info)
    from train.models import peft_quietly
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(cfg.adapter_init), is_trainable=True)
    peft_cfg = model.peft_config["default"]
    adopt_adapter_shape(cfg, peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout,
                        peft_cfg.target_modules)
    return model, started_from_record(cfg, run)
