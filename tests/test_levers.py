"""recipes.levers end to end on the stand-in with one method per trainer (ORPO, a train.prefs
method, GRPO; 1 training step each, to keep CI short — every method has its own test file):
trains from the tiny SFT adapter, scores SFT and each method on the ruler into one log, pairs
each with SFT, prints one table, and skips everything on a re-run."""
from __future__ import annotations

import json
import sqlite3

import pytest


@pytest.mark.slow
def test_levers_recipe_trains_scores_pairs_and_tabulates(tiny_sft_run, tiny_pairs_dir, tmp_path,
                                                         capsys):
    from recipes.levers import COLUMNS, main
    methods = ["orpo", "dpo", "grpo"]                    # one per trainer: orpo, prefs, grpo
    out = tmp_path / "levers"
    argv = ["--max-steps", "1", "--out", str(out), "--sft-adapter", str(tiny_sft_run),
            "--pairs", str(tiny_pairs_dir), "--methods", ",".join(methods)]
    assert main(argv) == 0
    results = json.loads((out / "levers.json").read_text())
    assert list(results) == ["sft", *methods]
    for method in methods:
        vs = results[method]["vs_sft"]
        assert vs["n"] == 30 and vs["label_a"] == "sft" and vs["label_b"] == method
        assert vs["b_better"] + vs["a_better"] + vs["equal"] == 30
        assert vs["mean_diff"] == pytest.approx(vs["mean_b"] - vs["mean_a"])
        assert json.loads((out / method / "run.json").read_text())["metrics"]
    assert results["sft"]["scorecard"]["n_cases"] == 30
    with sqlite3.connect(out / "experiments.db") as db:
        levers = [r[0] for r in db.execute("SELECT lever FROM experiments ORDER BY id")]
    assert levers == ["sft", *methods]
    md = (out / "levers.md").read_text()
    assert md.startswith("Judge: offline@") and " | ".join(COLUMNS) in md
    assert all(f"| {m} |" in md for m in methods)
    printed = capsys.readouterr().out
    assert "every lever on the ruler" in printed
    assert main(argv) == 0                               # nothing trained or scored again
    assert "already trained and scored, skipped" in capsys.readouterr().out
    with sqlite3.connect(out / "experiments.db") as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone()[0] == 1 + len(methods)


def test_unknown_method_exits_2(capsys, tmp_path):
    from recipes.levers import main
    assert main(["--methods", "dpo,ppo", "--out", str(tmp_path)]) == 2
    assert "unknown method(s) ppo" in capsys.readouterr().err
