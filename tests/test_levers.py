"""recipes.levers end to end on the stand-in, on a subset of methods (the full set is the same
code path per method, and each trainer has its own tests): trains from the tiny SFT adapter,
scores SFT and the method on the ruler into one log, pairs each with SFT, prints one table, and
skips everything on a re-run."""
from __future__ import annotations

import json
import sqlite3

import pytest


@pytest.mark.slow
def test_levers_recipe_trains_scores_pairs_and_tabulates(tiny_sft_run, tmp_path, capsys):
    from recipes.levers import COLUMNS, main
    out = tmp_path / "levers"
    argv = ["--methods", "adversarial", "--max-steps", "1", "--out", str(out),
            "--sft-adapter", str(tiny_sft_run)]
    assert main(argv) == 0
    results = json.loads((out / "levers.json").read_text())
    assert set(results) == {"sft", "adversarial"}
    vs = results["adversarial"]["vs_sft"]
    assert vs["n"] == 30 and vs["label_a"] == "sft" and vs["label_b"] == "adversarial"
    assert vs["b_better"] + vs["a_better"] + vs["equal"] == 30
    assert vs["mean_diff"] == pytest.approx(vs["mean_b"] - vs["mean_a"])
    assert results["sft"]["scorecard"]["n_cases"] == 30
    with sqlite3.connect(out / "experiments.db") as db:
        levers = [r[0] for r in db.execute("SELECT lever FROM experiments ORDER BY id")]
    assert levers == ["sft", "adversarial"]
    md = (out / "levers.md").read_text()
    assert md.startswith("Judge: offline@") and " | ".join(COLUMNS) in md
    assert "| adversarial |" in md
    printed = capsys.readouterr().out
    assert "every lever on the ruler" in printed
    assert main(argv) == 0                               # nothing trained or scored again
    assert "already trained and scored, skipped" in capsys.readouterr().out
    with sqlite3.connect(out / "experiments.db") as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone()[0] == 2


def test_unknown_method_exits_2(capsys, tmp_path):
    from recipes.levers import main
    assert main(["--methods", "dpo,ppo", "--out", str(tmp_path)]) == 2
    assert "unknown method(s) ppo" in capsys.readouterr().err
