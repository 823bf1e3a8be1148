"""What SFT and ORPO share: the LoRA config, device/precision resolution, run records and curves."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.contract import PROMPT_HASH
from train.config import config_hash
from train.models import pick_device, pick_precision

APPLE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate",
                    "anthropic", "safetensors", "tokenizers")


@dataclass
class LoraFields:
    """LoRA and run-control keys shared by every training stage (mixed into stage configs)."""
    lora_r: int = field(default=32, metadata={"help": "LoRA rank (Apple's adapters: 32)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (Apple's adapters: 16)"})
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(APPLE_LORA_TARGETS))


def lora_config(cfg):
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none",
                      task_type="CAUSAL_LM")


def resolve_runtime(device: str, precision: str) -> tuple[str, str]:
    dev = pick_device(device)
    return dev, pick_precision(dev, precision)


def trainer_precision_kwargs(device: str, precision: str) -> dict:
    """TRL/transformers TrainingArguments flags for the resolved device and precision."""
    return {"use_cpu": device == "cpu", "bf16": precision == "bf16", "fp16": precision == "fp16"}


def file_sha256(path: str | Path | None) -> str | None:
    if not path or not Path(path).exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def new_run_id(stage: str, cfg) -> str:
    return f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{config_hash(cfg)[:6]}"


def checkpoint_to_resume(output_dir: Path, value: str | None) -> str | None:
    """`latest` (or `true`) picks the newest checkpoint in the run's checkpoints folder."""
    if not value or value.lower() in ("false", "none", "no"):
        return None
    if value.lower() in ("latest", "true", "yes"):
        ckpts = sorted((output_dir / "checkpoints").glob("checkpoint-*"),
                       key=lambda p: int(p.name.split("-")[-1]))
        if not ckpts:
            raise FileNotFoundError(f"{output_dir}/checkpoints: no checkpoint to resume from")
        return str(ckpts[-1])
    if not Path(value).exists():
        raise FileNotFoundError(f"checkpoint not found: {value}")
    return value


def run_record(*, stage: str, run_id: str, cfg, base_info: dict, data: dict, metrics: dict,
               extra: dict | None = None) -> dict:
    return {
        "run_id": run_id, "stage": stage, "config": dataclasses.asdict(cfg),
        "config_hash": config_hash(cfg), "base_model": base_info,
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                 "target_modules": list(cfg.lora_target_modules)},
        "data": data, "prompt_hash": PROMPT_HASH, "versions": package_versions(),
        "git_commit": git_commit(), "metrics": metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
    }


def plot_curves(log_history: list[dict], out_png: Path, keys: tuple[str, ...], title: str) -> None:
    """One PNG of the logged curves against the global step (train and eval series)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for key in keys:
        pts = [(r["step"], r[key]) for r in log_history if key in r and "step" in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=key)
            drawn += 1
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def training_inputs(path: str | Path) -> list[str]:
    """Task inputs of a prompt/completion or preference JSONL (user turn, 'Task: ' stripped)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            for m in row.get("prompt", []):
                if m.get("role") == "user":
                    text = m["content"]
                    out.append(text[len("Task: "):] if text.startswith("Task: ") else text)
    return out
