"""train.orpo on the tiny stand-in, continuing the tiny SFT adapter: finite losses, a larger
held-out log-probability margin than the SFT adapter it started from, run.json, curves, resume."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pairs_dir(tiny_pairs_dir) -> Path:
    return tiny_pairs_dir


def tiny_orpo_config(standin: Path, pairs: Path, sft_run: Path, output_dir: Path, **overrides):
    from train.orpo import ORPORunConfig
    base = {"model_name_or_path": str(standin), "adapter_init": str(sft_run),
            "train_file": str(pairs / "train.jsonl"), "val_file": str(pairs / "val.jsonl"),
            "output_dir": str(output_dir), "progress": False}
    base.update(overrides)
    return load_config(ORPORunConfig, REPO / "configs" / "tiny-orpo.yaml", base)


@pytest.fixture(scope="module")
def orpo_run(standin_dir, pairs_dir, tiny_sft_run, tmp_path_factory) -> Path:
    import torch

    from train.orpo import run_orpo
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("orpo") / "run"
    return run_orpo(tiny_orpo_config(standin_dir, pairs_dir, tiny_sft_run, out))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_losses_stay_finite(orpo_run):
    run = json.loads((orpo_run / "run.json").read_text())
    m = run["metrics"]
    assert m["global_step"] == run["config"]["max_steps"] and len(m["train_loss"]) >= 4
    assert m["nonfinite_losses"] == 0
    for key in ("train_loss", "eval_loss", "nll_loss", "log_odds_ratio", "rewards/margins"):
        assert m[key] and all(math.isfinite(x) for x in m[key]), key
    assert all(0.0 <= x <= 1.0 for x in m["rewards/accuracies"])
    assert m["final_eval_rewards/accuracies"] is not None and m["log_odds_chosen"]


@pytest.mark.slow
def test_heldout_margin_beats_the_sft_adapter(orpo_run, tiny_sft_run, standin_dir, pairs_dir):
    """Measured here from the saved adapters, independently of what run.json claims."""
    import torch

    from train.models import load_with_adapter
    from train.preference import preference_margins
    val = read_jsonl(pairs_dir / "val.jsonl")
    train_tasks = {r["id"].split("#")[0] for r in read_jsonl(pairs_dir / "train.jsonl")}
    assert val and not {r["id"].split("#")[0] for r in val} & train_tasks   # truly held out
    means = {}
    for name, adapter in (("sft", tiny_sft_run), ("orpo", orpo_run)):
        torch.manual_seed(0)
        model, tok, _ = load_with_adapter(str(standin_dir), adapter)
        margins = preference_margins(model, tok, val)
        means[name] = sum(margins) / len(margins)
    assert means["orpo"] > means["sft"], means
    m = json.loads((orpo_run / "run.json").read_text())["metrics"]
    assert m["val_logp_margin_before"] == pytest.approx(means["sft"], abs=1e-4)
    assert m["val_logp_margin_after"] == pytest.approx(means["orpo"], abs=1e-4)


@pytest.mark.slow
def test_run_folder_matches_sft(orpo_run, tiny_sft_run, pairs_dir):
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json",
                 "loss_curve.png", "preference_curves.png", "tokenizer/tokenizer_config.json"):
        assert (orpo_run / name).exists(), name
    run = json.loads((orpo_run / "run.json").read_text())
    sft = json.loads((tiny_sft_run / "run.json").read_text())
    assert run["stage"] == "orpo" and re.fullmatch(r"orpo-\d{8}T\d{6}-[0-9a-f]{6}", run["run_id"])
    assert run["started_from"]["run_dir"] == str(tiny_sft_run)
    assert run["started_from"]["run_id"] == sft["run_id"]
    assert run["base_model"]["identity"] == sft["base_model"]["identity"]
    assert run["lora"] == sft["lora"] | {"dropout": run["lora"]["dropout"]}
    assert run["prompt_hash"] == sft["prompt_hash"]
    train_inputs = [r["prompt"][1]["content"][len("Task: "):]
                    for r in read_jsonl(pairs_dir / "train.jsonl")]
    assert run["data"]["inputs"] == train_inputs and run["data"]["ruler_leaks"] == []
    assert run["data"]["n_train"] == len(train_inputs)
    assert run["config"]["learning_rate"] > 1e-6     # a LoRA-sized rate, not TRL's ORPO default
    ckpts = sorted((orpo_run / "checkpoints").glob("checkpoint-*"))
    assert ckpts


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(orpo_run, standin_dir, pairs_dir,
                                                     tiny_sft_run, tmp_path):
    from train.orpo import run_orpo
    copy = tmp_path / "run"
    shutil.copytree(orpo_run, copy)
    latest = max((copy / "checkpoints").glob("checkpoint-*"),
                 key=lambda p: int(p.name.split("-")[1]))
    steps = json.loads((orpo_run / "run.json").read_text())["config"]["max_steps"] + 2
    out = run_orpo(tiny_orpo_config(standin_dir, pairs_dir, tiny_sft_run, copy, max_steps=steps,
                                    resume_from_checkpoint="latest", val_file=None,
                                    measure_margins=False))
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from"] == str(latest)
    assert run["metrics"]["global_step"] == steps
    assert run["metrics"]["nonfinite_losses"] == 0


def test_default_learning_rate_suits_lora():
    from train.orpo import ORPORunConfig
    assert ORPORunConfig().learning_rate >= 1e-5


def test_configs_load_and_reject_unknown_keys():
    from train.orpo import ORPORunConfig
    for name in ("orpo.yaml", "tiny-orpo.yaml", "afm-orpo.yaml"):
        cfg = load_config(ORPORunConfig, REPO / "configs" / name)
        assert cfg.learning_rate >= 1e-5
    with pytest.raises(ConfigError, match="unknown config key 'adapter_int'.*adapter_init"):
        load_config(ORPORunConfig, None, {"adapter_int": "runs/sft"})


@pytest.mark.slow
def test_adapter_for_another_base_is_refused(tiny_sft_run, standin_dir, pairs_dir, tmp_path):
    from train.orpo import run_orpo
    other = tmp_path / "sft-other"
    shutil.copytree(tiny_sft_run, other)
    run = json.loads((other / "run.json").read_text())
    run["base_model"]["identity"] = "0" * 64
    (other / "run.json").write_text(json.dumps(run))
    with pytest.raises(ConfigError, match="only fits the base it was trained on"):
        run_orpo(tiny_orpo_config(standin_dir, pairs_dir, other, tmp_path / "out"))


def test_trl_orpo_is_imported_only_by_train_orpo():
    hits = [p for d in ("data", "train", "eval", "export", "recipes", "bench")
            for p in (REPO / d).rglob("*.py")
            if "trl.experimental.orpo" in p.read_text(encoding="utf-8", errors="replace")]
    assert [p.relative_to(REPO).as_posix() for p in hits] == ["train/orpo.py"]


def test_help_lists_the_keys(capsys):
    from train.orpo import main
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--adapter_init" in out and "--beta" in out and "--learning_rate" in out
