"""`python -m eval.run` end to end on the tiny stand-in with the offline judge.

The three full 30-case runs (base, base again, SFT adapter) are made once per module and shared;
the other generating tests use a handful of new tokens.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval import log as explog
from judge.records import read_records
from eval.ruler import RulerError
from eval.run import main as run_main
from eval.adapter_check import training_inputs_of
from eval.run import run_eval

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(tmp_path_factory, standin_dir, tiny_sft_run):
    import torch
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-run")
    db = root / "experiments.db"
    common = dict(base=str(standin_dir), pipeline="single", judge="offline", db=db,
                  progress=False, quiet=True)
    base = run_eval(label="base", note="the untrained stand-in", out_dir=root / "base", **common)
    again = run_eval(label="base", note="unchanged re-run: must be identical",
                     out_dir=root / "base-again", **common)
    sft = run_eval(adapter=tiny_sft_run, label="sft", lever="sft",
                   note="SFT on the references beats the base", out_dir=root / "sft", **common)
    return {"root": root, "db": db, "base": base, "again": again, "sft": sft}


def test_scores_base_and_adapter_and_writes_results(scored):
    for name in ("base", "sft"):
        s = scored[name]
        out = Path(s["out_dir"])
        assert s["scorecard"]["n_cases"] == 30
        cases = json.loads((out / "cases.json").read_text())
        assert len(cases) == 30 and len({c["case_id"] for c in cases}) == 30
        for c in cases:
            assert {"input", "gold", "raw_output", "candidate", "spec", "verdict", "notes",
                    "quality", "error"} <= set(c)
        records = read_records(out / "records.jsonl")          # the eval.score format
        assert [r.case_id for r in records] == [c["case_id"] for c in cases]
        assert json.loads((out / "scorecard.json").read_text())["headline"] == \
            pytest.approx(s["scorecard"]["headline"])
        exp = json.loads((out / "experiment.json").read_text())
        assert exp["experiment_id"] == s["experiment_id"] and exp["status"] == s["status"]
    exps = explog.read_experiments(scored["db"])
    assert [e.label for e in exps] == ["base", "base", "sft"]
    assert exps[2].adapter_hash and exps[2].adapter_run_id and exps[2].lever == "sft"
    assert exps[0].judge.startswith("offline@") and exps[0].ruler_version >= 1


def test_greedy_runs_are_bit_for_bit_repeatable(scored):
    a, b = scored["base"], scored["again"]
    assert [c["raw_output"] for c in a["cases"]] == [c["raw_output"] for c in b["cases"]]
    assert a["cases"] == b["cases"]
    assert (Path(a["out_dir"]) / "records.jsonl").read_bytes() == \
        (Path(b["out_dir"]) / "records.jsonl").read_bytes()
    assert a["scorecard"] == b["scorecard"] and a["config_hash"] == b["config_hash"]
    # Same score is not a beat: the re-run is discarded, compared case by case with the base.
    assert a["status"] == "kept" and b["status"] == "discarded"
    assert b["best_before"]["id"] == a["experiment_id"]
    c = b["comparison"]
    assert c["n"] == 30 and c["mean_diff"] == 0 and c["equal"] == 30
    assert c["distinguishable"] is False


def test_sft_adapter_beats_the_untrained_base(scored):
    base, sft = scored["base"]["scorecard"], scored["sft"]["scorecard"]
    numbers = (f"base: headline {base['headline']:.3f}, spec-pass {base['spec_pass_rate']:.2f}; "
               f"sft: headline {sft['headline']:.3f}, spec-pass {sft['spec_pass_rate']:.2f}")
    assert sft["spec_pass_rate"] > base["spec_pass_rate"], numbers
    assert sft["headline"] > base["headline"], numbers
    s = scored["sft"]
    assert s["status"] == "kept" and s["best_before"]["id"] == scored["base"]["experiment_id"]
    assert s["comparison"]["mean_diff"] == pytest.approx(sft["headline"] - base["headline"])


def _adapter_copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    if edit is not None:
        run = json.loads((dst / "run.json").read_text())
        edit(run)
        (dst / "run.json").write_text(json.dumps(run))
    return dst


def test_adapter_trained_on_a_ruler_task_is_logged_invalid(scored, tiny_sft_run, standin_dir,
                                                           tmp_path):
    before = explog.read_experiments(scored["db"])
    best_before = explog.running_best(before, before[0].key)
    leaky = _adapter_copy(tiny_sft_run, tmp_path / "leaky",
                          lambda r: r["data"]["inputs"].append("plan my Paris trip!"))
    s = run_eval(base=str(standin_dir), adapter=leaky, label="leaky", note="should be invalid",
                 lever="sft", db=scored["db"], out_dir=tmp_path / "out-leaky",
                 max_new_tokens=8, progress=False, quiet=True)
    assert s["status"] == "invalid"
    assert "ruler-01" in s["reason"] and "plan my Paris trip!" in s["reason"]
    row = next(e for e in explog.read_experiments(scored["db"]) if e.id == s["experiment_id"])
    assert row.effective_status == "invalid" and row.row["reason"] == s["reason"]
    # No run.json: the training data cannot be checked, so the score cannot be trusted either.
    bare = tmp_path / "bare"
    shutil.copytree(tiny_sft_run, bare, ignore=shutil.ignore_patterns("checkpoints", "run.json"))
    s2 = run_eval(base=str(standin_dir), adapter=bare, label="bare", note="no run.json",
                  db=scored["db"], out_dir=tmp_path / "out-bare", max_new_tokens=8,
                  progress=False, quiet=True)
    assert s2["status"] == "invalid" and "cannot be checked" in s2["reason"]
    # Invalid experiments never move the running best.
    assert explog.running_best(explog.read_experiments(scored["db"]), row.key).id == \
        best_before.id


def test_training_inputs_from_a_verified_training_file(tiny_sft_run, sft_data_dir):
    from train.common import file_sha256
    run = json.loads((Path(tiny_sft_run) / "run.json").read_text())
    assert training_inputs_of(run, tiny_sft_run)[0] == run["data"]["inputs"]
    train = sft_data_dir / "train.jsonl"
    older = {"data": {"train_file": str(train), "train_sha256": file_sha256(train)}}
    inputs, why = training_inputs_of(older, "old-run")
    assert why is None and len(inputs) == run["data"]["n_train"]
    older["data"]["train_sha256"] = "0" * 64
    inputs, why = training_inputs_of(older, "old-run")
    assert inputs is None and "changed since training" in why


def test_adapter_of_another_base_is_refused(tiny_sft_run, standin_dir, tmp_path):
    moved = _adapter_copy(tiny_sft_run, tmp_path / "other-base",
                          lambda r: r["base_model"].update(identity="f" * 64, name_or_path="x"))
    with pytest.raises(ValueError, match="was trained on base x"):
        run_eval(base=str(standin_dir), adapter=moved, label="x", note="x",
                 db=tmp_path / "db.sqlite", out_dir=tmp_path / "o", progress=False, quiet=True)
    assert not (tmp_path / "db.sqlite").exists() or not explog.read_experiments(
        tmp_path / "db.sqlite")


def test_a_ruler_that_does_not_match_its_manifest_is_refused(tmp_path, standin_dir, capsys):
    ruler = tmp_path / "ruler"
    shutil.copytree(REPO / "eval" / "ruler", ruler,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    case = ruler / "cases" / "ruler-05.json"
    case.write_text(case.read_text().replace('"input": "', '"input": "Quietly ', 1))
    with pytest.raises(RulerError, match="ruler-05.json: changed"):
        run_eval(base=str(standin_dir), label="x", note="x", db=tmp_path / "db.sqlite",
                 ruler_dir=ruler, progress=False, quiet=True)
    rc = run_main(["--base", str(standin_dir), "--label", "x", "--note", "x",
                   "--db", str(tmp_path / "db.sqlite"), "--ruler-dir", str(ruler)])
    assert rc == 1 and "does not match its manifest" in capsys.readouterr().err
    assert not (tmp_path / "db.sqlite").exists()


def test_cli_argument_errors(tmp_path, standin_dir, capsys):
    rc = run_main(["--base", str(standin_dir), "--label", "x", "--note", "x", "--swap",
                   "--db", str(tmp_path / "db.sqlite")])
    assert rc == 2 and "anthropic judge only" in capsys.readouterr().err
    rc = run_main(["--base", str(standin_dir), "--adapter", str(tmp_path), "--label", "x",
                   "--note", "x", "--db", str(tmp_path / "db.sqlite")])
    assert rc == 2 and "not a PEFT adapter folder" in capsys.readouterr().err


def test_cli_end_to_end(tmp_path, standin_dir, tiny_sft_run):
    db, out = tmp_path / "experiments.db", tmp_path / "cli-out"
    cmd = [sys.executable, "-m", "eval.run", "--base", str(standin_dir), "--adapter",
           str(tiny_sft_run), "--pipeline", "overgen-prune", "--judge", "offline",
           "--label", "cli-sft", "--note", "overgen on the tiny adapter", "--lever", "sft",
           "--db", str(db), "--out-dir", str(out), "--max-new-tokens", "12", "--no-progress"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "QUALITY" in p.stdout and "logged as KEPT" in p.stdout
    assert "Running best: none yet" in p.stdout
    (exp,) = explog.read_experiments(db)
    assert exp.pipeline == "overgen-prune" and exp.label == "cli-sft"
    assert json.loads(exp.config_json)["generation"]["overgen_questions"] == 8
    assert len(json.loads((out / "cases.json").read_text())) == 30
