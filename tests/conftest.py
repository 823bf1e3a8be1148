"""Shared fixtures: the offline stand-in, the bundled SFT data and one tiny SFT run.

The stand-in and the tiny SFT adapter are expensive to make (tens of seconds), so they are built
once and cached under .cache/ keyed by everything that determines them; tests that need to watch
training happen call train.sft themselves.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# The suite's older tests (prefs, negatives, eval.run, recipes) were written against the lexical
# offline judge and run near CI's time budget; they keep it. tests/test_semantic_judge.py
# clears this to test the embedding default (loading MiniLM once for the session).
os.environ.setdefault("FMDISTILL_OFFLINE_BACKEND", "lexical")

REPO = Path(__file__).resolve().parent.parent
FIXTURE_CACHE = REPO / ".cache" / "fixtures"


@pytest.fixture(scope="session")
def standin_dir() -> Path:
    from train.standin import build_standin
    return build_standin(progress=False)


@pytest.fixture(scope="session")
def sft_data_dir(tmp_path_factory) -> Path:
    from data.corpus import REFERENCES_DIR
    from data.sft import build_sft_data
    out = tmp_path_factory.mktemp("sft-data")
    build_sft_data([REFERENCES_DIR], out, val_fraction=0.1, seed=0)
    return out


def tiny_sft_config(standin: Path, data_dir: Path, output_dir: Path, **overrides):
    from train.config import load_config
    from train.sft import SFTRunConfig
    base = {"model_name_or_path": str(standin), "train_file": str(data_dir / "train.jsonl"),
            "val_file": str(data_dir / "val.jsonl"), "output_dir": str(output_dir),
            "progress": False}
    base.update(overrides)
    return load_config(SFTRunConfig, REPO / "configs" / "tiny-sft.yaml", base)


@pytest.fixture(scope="session")
def tiny_sft_run(standin_dir, sft_data_dir) -> Path:
    """A tiny SFT adapter trained with configs/tiny-sft.yaml on the bundled references (cached)."""
    from train.common import file_sha256
    from train.sft import run_sft
    h = hashlib.sha256()
    h.update(standin_dir.name.encode())
    h.update((REPO / "configs" / "tiny-sft.yaml").read_bytes())
    h.update(file_sha256(sft_data_dir / "train.jsonl").encode())
    out = FIXTURE_CACHE / f"sft-tiny-{h.hexdigest()[:16]}"
    done = lambda: (out / "run.json").exists() and (out / "adapter_model.safetensors").exists()
    if done():
        return out
    FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
    with open(FIXTURE_CACHE / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions train it once
        if done():
            return out
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        run_sft(tiny_sft_config(standin_dir, sft_data_dir, tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_pairs_dir(tmp_path_factory) -> Path:
    """Offline preference pairs from 24 bundled references (synthetic negatives, offline judge)."""
    from data.corpus import REFERENCES_DIR
    from judge.judges import get_judge
    from prefs.build import PrefsOptions, build_prefs
    out = tmp_path_factory.mktemp("pairs")
    build_prefs([REFERENCES_DIR], out, get_judge("offline"),
                options=PrefsOptions(limit=24, val_fraction=0.25, seed=0), progress=False)
    return out


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A valid stand-in conformance .fmadapter exported from a synthetic run (one per module)."""
    from export.fmadapter import main
    from export.synthetic import synthetic_standin_run
    root = tmp_path_factory.mktemp("pkg")
    run = synthetic_standin_run(root / "run")
    assert main(["--adapter", str(run), "--name", "tiny", "--out", str(root / "out"), "--quiet",
                 "--allow-stand-in"]) == 0
    return root / "out" / "tiny.fmadapter"
