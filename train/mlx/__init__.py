"""The MLX backend: train, sample and export LoRA adapters natively on Apple silicon.

`backend: mlx` in a train.sft / train.orpo config (or `--backend mlx`) trains with MLX instead of
torch + TRL, on the same YAML keys, data and run folder. The adapter is written in PEFT's layout
(adapter_config.json + adapter_model.safetensors with PEFT's tensor names), so export, eval and
a later torch stage read an MLX run exactly as they read a torch one. See docs/mlx.md.

Nothing here imports mlx at module level: without it installed, `require_mlx()` names the
install command.
"""
from __future__ import annotations

from train.config import ConfigError

MLX_INSTALL = "pip install -c constraints.txt -e '.[mlx]'"


def mlx_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm"))


def require_mlx(what: str = "backend: mlx") -> None:
    """Raise a ConfigError naming the install command when mlx / mlx-lm are missing."""
    if not mlx_available():
        raise ConfigError(f"{what} needs MLX (mlx and mlx-lm), which is not installed here. "
                          f"Install it with: {MLX_INSTALL} (Apple silicon uses Metal; Linux "
                          "gets the CPU build, mlx-cpu)")
