"""train.prefs: DPO, IPO, SimPO and KTO on the tiny stand-in, continuing the tiny SFT adapter.

Each method's first logged loss is checked against what its loss must be when the policy equals
its reference (TRL's frozen copy of the SFT adapter): DPO log 2, IPO (1/(2 beta))^2, KTO 1/2;
then the run folder, the training itself (the adapter moved, losses finite) and the export path.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
STEPS = 4


def prefs_config(config_name: str, standin: Path, pairs: Path, sft_run: Path, output_dir: Path,
                 **overrides):
    from train.prefs import PrefsRunConfig
    base = {"model_name_or_path": str(standin), "adapter_init": str(sft_run),
            "train_file": str(pairs / "train.jsonl"), "val_file": str(pairs / "val.jsonl"),
            "output_dir": str(output_dir), "progress": False, "max_steps": STEPS,
            "logging_steps": 1, "save_strategy": "no", "measure_margins": False}
    base.update(overrides)
    return load_config(PrefsRunConfig, REPO / "configs" / f"tiny-{config_name}.yaml", base)


@pytest.fixture(scope="module")
def runs(standin_dir, tiny_pairs_dir, tiny_sft_run, tmp_path_factory) -> dict[str, Path]:
    import torch

    from train.prefs import run_prefs
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("prefs-methods")
    out = {}
    for method in ("dpo", "ipo", "simpo", "kto"):
        extra = {"measure_margins": True} if method == "dpo" else {}
        out[method] = run_prefs(prefs_config(method, standin_dir, tiny_pairs_dir, tiny_sft_run,
                                             root / method, **extra))
    return out


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "kto"])
def test_run_folder_and_finite_training(runs, method, tiny_sft_run):
    run = run_json(runs[method])
    m = run["metrics"]
    assert run["stage"] == method and m["method"] == method
    assert m["global_step"] == STEPS and len(m["train_loss"]) == STEPS
    assert m["nonfinite_losses"] == 0 and all(math.isfinite(x) for x in m["train_loss"])
    assert run["started_from"]["run_dir"] == str(tiny_sft_run)
    assert run["data"]["inputs"] and run["data"]["ruler_leaks"] == []
    for name in ("adapter_model.safetensors", "adapter_config.json", "loss_curve.png",
                 "preference_curves.png"):
        assert (runs[method] / name).is_file(), name
    assert not (runs[method] / "ref").exists()      # TRL's reference copy is not saved


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "kto"])
def test_the_adapter_moved_from_the_sft_start(runs, method, tiny_sft_run):
    from safetensors.torch import load_file
    start = load_file(str(tiny_sft_run / "adapter_model.safetensors"))
    end = load_file(str(runs[method] / "adapter_model.safetensors"))
    assert start.keys() == end.keys()
    moved = max(float((end[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4, f"{method}: LoRA weights did not change ({moved})"


@pytest.mark.slow
def test_first_losses_match_a_policy_equal_to_its_reference(runs):
    """At step 1 the policy is the SFT adapter and so is the reference: every log-ratio is 0."""
    first = {m: run_json(runs[m])["metrics"]["train_loss"][0] for m in ("dpo", "ipo", "kto")}
    beta = {m: run_json(runs[m])["metrics"]["beta"] for m in first}
    assert first["dpo"] == pytest.approx(math.log(2), abs=1e-3)
    assert first["ipo"] == pytest.approx((1 / (2 * beta["ipo"])) ** 2, rel=1e-3)
    assert first["kto"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_dpo_records_the_heldout_margin_and_rewards(runs):
    m = run_json(runs["dpo"])["metrics"]
    assert m["val_logp_margin_before"] is not None and m["val_logp_margin_after"] is not None
    assert m["rewards/margins"] and all(0.0 <= x <= 1.0 for x in m["rewards/accuracies"])


@pytest.mark.slow
def test_every_method_exports_like_sft(runs, tmp_path):
    from export.package import export_adapter
    for method, run in runs.items():
        res = export_adapter(run, f"planner_{method}", tmp_path, allow_stand_in=True,
                             progress=False)
        assert (res.path / "adapter_weights.bin").stat().st_size == res.bytes


@pytest.mark.slow
def test_method_orpo_is_train_orpo(standin_dir, tiny_pairs_dir, tiny_sft_run, tmp_path):
    from train.prefs import run_prefs
    out = run_prefs(prefs_config("dpo", standin_dir, tiny_pairs_dir, tiny_sft_run,
                                 tmp_path / "orpo", method="orpo", max_steps=2, beta=None))
    run = run_json(out)
    assert run["stage"] == "orpo" and run["config"]["beta"] == 0.1
    assert "log_odds_ratio" in run["metrics"]


def test_configs_load_and_name_their_method():
    from train.prefs import METHODS, PrefsRunConfig
    for method in METHODS[1:]:
        for name in (f"{method}.yaml", f"tiny-{method}.yaml"):
            cfg = load_config(PrefsRunConfig, REPO / "configs" / name)
            assert cfg.method == method and cfg.learning_rate >= 1e-5, name
    with pytest.raises(ConfigError, match="unknown config key 'simpo_gama'.*simpo_gamma"):
        load_config(PrefsRunConfig, None, {"simpo_gama": 1.0})


@pytest.mark.parametrize("override, message", [
    (["--method", "rlhf"], "method 'rlhf': choose one of orpo, dpo, ipo, simpo, kto"),
    (["--method", "kto", "--per_device_train_batch_size", "1"], "kto: per_device_train_batch"),
    (["--beta", "-1"], "beta must be a positive number"),
])
def test_bad_method_settings_exit_2_before_loading_anything(override, message, capsys):
    from train.prefs import main
    assert main(["--config", str(REPO / "configs" / "tiny-dpo.yaml"), *override]) == 2
    assert message in capsys.readouterr().err
