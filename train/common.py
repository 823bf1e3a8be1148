"""What SFT and ORPO share: the LoRA config, device/precision resolution, run records and curves."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data.contract import PROMPT_HASH
from train.config import ConfigError, config_hash, config_help, load_cli_config
from train.models import pick_device, pick_precision

APPLE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Marks a checkpoint as written by the MLX backend (train.mlx.trainer), which torch refuses.
MLX_CHECKPOINT_STATE = "mlx_trainer_state.json"
TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate",
                    "anthropic", "safetensors", "tokenizers")


@dataclass
class LoraFields:
    """LoRA and run-control keys shared by every training stage (mixed into stage configs)."""
    lora_r: int = field(default=32, metadata={"help": "LoRA rank (Apple's adapters: 32)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (Apple's adapters: 16)"})
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(APPLE_LORA_TARGETS))


@dataclass
class TrainingFields(LoraFields):
    """Keys every training stage takes; a stage subclasses it and overrides defaults it needs."""
    model_name_or_path: str = field(default="Qwen/Qwen2.5-3B-Instruct", metadata={
        "help": "hub id, local save_pretrained folder, Apple toolkit assets folder, or 'standin'"})
    model_revision: str | None = None
    train_file: str = "runs/data/sft/train.jsonl"
    val_file: str | None = "runs/data/sft/val.jsonl"
    output_dir: str = "runs/sft"
    learning_rate: float = 2e-4
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_length: int = 1024
    seed: int = 42
    logging_steps: int = 5
    save_strategy: str = "epoch"
    save_steps: int = 500
    save_total_limit: int = 2
    device: str = field(default="auto", metadata={"help": "auto | cuda | mps | cpu"})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp16 | fp32"})
    gradient_checkpointing: bool = False
    resume_from_checkpoint: str | None = field(default=None,
                                               metadata={"help": "latest | PATH"})
    progress: bool = True
    # Literal: load_config rejects any other value naming the key and the choices.
    report_to: Literal["none", "tensorboard", "wandb", "mlflow", "trackio"] = field(
        default="none", metadata={"help": "none | tensorboard | wandb | mlflow | trackio; "
                                          "tensorboard writes OUTPUT_DIR/checkpoints/runs/ (or $TENSORBOARD_LOGGING_DIR)"})
    use_liger_kernel: bool = field(default=False, metadata={
        "help": "Liger's fused Triton kernels (CUDA only; refused on CPU/MPS)"})


@dataclass
class BackendFields:
    """Keys of the stages that run on either backend (train.sft, train.orpo)."""
    backend: Literal["torch", "mlx"] = field(default="torch", metadata={
        "help": "torch (TRL + PEFT; CUDA/MPS/CPU) | mlx (native Apple silicon; same run folder)"})
    kv_quant: Literal["off", "device"] = field(default="off", metadata={
        "help": "Apple's base only: off | device (fake-quantise K/V to int8 with the checkpoint's "
                "ranges as the device runtime does; straight-through gradient)"})


def check_liger(use_liger: bool, device: str) -> None:
    """Liger's kernels are Triton, which runs only on CUDA; on CPU/MPS transformers would fail
    deep inside patching (or silently not patch), so refuse up front, naming the key."""
    if use_liger and device != "cuda":
        raise ConfigError(f"use_liger_kernel: true needs a CUDA device (Liger's kernels are "
                          f"Triton); this run resolved device={device!r}. Set "
                          "use_liger_kernel: false")


def check_report_to(report_to: str) -> None:
    """A tracker that is not installed fails here, naming the key and the install, rather than
    inside transformers' callback set-up after the model is loaded."""
    import importlib.util
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        extra = " (pip install -c constraints.txt -e '.[tracking]')" \
            if report_to == "tensorboard" else ""
        raise ConfigError(f"report_to: {report_to} needs the {report_to!r} package, which is "
                          f"not installed{extra}")


def trainer_args_kwargs(cfg: TrainingFields, out: Path, has_val: bool, device: str,
                        precision: str) -> dict:
    """The TrainingArguments every stage shares (TRL's SFTConfig and ORPOConfig both take them)."""
    check_liger(cfg.use_liger_kernel, device)
    check_report_to(cfg.report_to)
    return dict(
        output_dir=str(out / "checkpoints"), learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay, max_length=cfg.max_length, seed=cfg.seed,
        data_seed=cfg.seed, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy=cfg.save_strategy, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, eval_strategy="epoch" if has_val else "no",
        activation_checkpointing=cfg.gradient_checkpointing, report_to=cfg.report_to,
        use_liger_kernel=cfg.use_liger_kernel,
        disable_tqdm=not cfg.progress, dataloader_num_workers=0,
        **trainer_precision_kwargs(device, precision))


def quiet_datasets() -> None:
    """No progress bar per datasets.map (TRL tokenises, labels, truncates and filters with four
    of them per split); the stage's own bar is the one a user watches. Also silences the one
    FutureWarning PEFT's own wrapping raises on every run (see train.models.peft_quietly)."""
    import warnings

    import datasets
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`is_gradient_checkpointing` is deprecated")


def one_progress_bar(trainer, desc: str) -> None:
    """Replace the Trainer's bar (which prints every log dict as a raw line and opens a second
    bar per evaluation) with one bar per stage: steps, ETA, and the latest loss, eval loss or
    reward as its postfix. The full log stays in trainer.state.log_history (run.json)."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    if not any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks):
        return      # progress: false (disable_tqdm)

    class StageBar(TrainerCallback):
        bar = None
        shown: dict = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=desc,
                                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            for key in ("loss", "eval_loss", "reward"):
                if isinstance(logs.get(key), (int, float)):
                    self.shown[key] = f"{logs[key]:.4g}"
            self.bar.set_postfix(self.shown, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StageBar())


def warn_ruler_leaks(data: dict) -> None:
    """Training goes on (the user may be testing the guard), but the run carries the evidence
    and eval logs every score of the adapter as invalid."""
    if data["ruler_leaks"]:
        print(f"WARNING: {len(data['ruler_leaks'])} training input(s) match ruler tasks; scores "
              "of this adapter will be logged invalid:\n  " + "\n  ".join(data["ruler_leaks"]),
              file=sys.stderr)


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
        return refuse_mlx_checkpoint(str(ckpts[-1]))
    if not Path(value).exists():
        raise FileNotFoundError(f"checkpoint not found: {value}")
    return refuse_mlx_checkpoint(value)


def refuse_mlx_checkpoint(path: str) -> str:
    if (Path(path) / MLX_CHECKPOINT_STATE).exists():
        raise ConfigError(f"{path}: this checkpoint was written by the MLX backend; resume it "
                          "with backend: mlx, or start a fresh run")
    return path


def run_record(*, stage: str, run_id: str, cfg, base_info: dict, data: dict, metrics: dict,
               extra: dict | None = None) -> dict:
    return {
        "run_id": run_id, "stage": stage, "config": dataclasses.asdict(cfg),
        "config_hash": config_hash(cfg), "base_model": base_info,
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                 "target_modules": list(cfg.lora_target_modules)},
        # The prompt the data was trained with: the contract's, or the data's own (data.formats).
        "data": data, "prompt_hash": (data.get("prompt") or {}).get("sha256", PROMPT_HASH),
        "versions": package_versions(),
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


def stage_main(cls, run, doc: str, argv: list[str] | None, made: str) -> int:
    """The CLI of a training stage: `--help` lists the config keys; `--config PATH` plus
    `--key value` overrides build the config; `run(cfg)` trains and returns the run folder. Bad
    config or missing files exit 2 with one line; only the main process reports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(doc + "\nConfig keys (YAML or --key value):\n" + config_help(cls))
        return 0
    try:
        out = run(load_cli_config(cls, argv))
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is not None and (out / "run.json").exists() and is_main_process():
        prompt = json.loads((out / "run.json").read_text()).get("prompt_hash") or PROMPT_HASH
        print(f"adapter written to {out} ({made}); prompt {prompt[:12]}")
    return 0


def is_main_process() -> bool:
    """Rank 0 under torchrun/accelerate, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0
