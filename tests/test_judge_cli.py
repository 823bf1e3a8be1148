"""`python -m eval.judge` / `eval.score` wiring: gate, judge (offline and anthropic), records."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from data.contract import render_assistant
from eval.judge import main as judge_main
from judge.metric import scorecard
from judge.records import read_records
from eval.ruler import DEFAULT_RULER_DIR, freeze, load_ruler
from eval.score import main as score_main

try:
    from tests.fakes import FakeAnthropic, Fault
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import FakeAnthropic, Fault

REPO = DEFAULT_RULER_DIR.parent.parent
KEY = "sk-ant-test-judge-cli-0123456789abcdef"


@pytest.fixture
def ruler(tmp_path):
    root = tmp_path / "ruler"
    shutil.copytree(DEFAULT_RULER_DIR / "cases", root / "cases")
    freeze(root)
    cases, _ = load_ruler(ruler_dir=root)
    return root, cases


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gold_candidates(cases):
    return [{"id": c.id, "candidate": c.gold.to_dict("snake")} for c in cases]


def test_offline_scores_gold_as_ties_and_score_reproduces_it(ruler, tmp_path, capsys):
    root, cases = ruler
    cands = write_jsonl(tmp_path / "c.jsonl", gold_candidates(cases))
    out = tmp_path / "judged.jsonl"
    card_json = tmp_path / "card.json"
    rc = judge_main(["--candidates", str(cands), "--judge", "offline", "--out", str(out),
                     "--ruler-dir", str(root), "--experiment", "gold-as-candidate",
                     "--scorecard-json", str(card_json)])
    text = capsys.readouterr().out
    assert rc == 0 and "proxy" in text and "0 / 30 / 0" in text
    records = read_records(out)
    assert len(records) == 30 and all(r.verdict.pairwise == "tie" for r in records)
    assert all(r.ruler["version"] == 1 and r.judge.startswith("offline@") for r in records)
    card = json.loads(card_json.read_text())
    assert card["headline"] == pytest.approx(scorecard(records).headline)
    assert score_main(["--records", str(out), "--ruler-dir", str(root)]) == 0
    assert f"{card['headline']:.3f}" in capsys.readouterr().out


def test_gate_errors_raw_text_and_input_keys(ruler, tmp_path, capsys):
    root, cases = ruler
    rows = gold_candidates(cases)
    six = replace(cases[0].gold, questions=cases[0].gold.questions[:6])
    rows[0] = {"id": cases[0].id, "candidate": six.to_dict()}                  # spec failure
    rows[1] = {"id": cases[1].id, "error": "the on-device model refused"}       # generation error
    rows[2] = {"input": cases[2].input.upper(), "candidate": render_assistant(cases[2].gold)}
    rows[3] = {"id": cases[3].id, "candidate": "I cannot help with that."}      # unparseable
    out = tmp_path / "judged.jsonl"
    rc = judge_main(["--candidates", str(write_jsonl(tmp_path / "c.jsonl", rows)),
                     "--out", str(out), "--ruler-dir", str(root)])
    assert rc == 0
    r = read_records(out)
    assert not r[0].spec_passed and "6 questions" in r[0].violations[0] and r[0].verdict is None
    assert r[1].error == "the on-device model refused" and r[1].error_kind == "generation"
    assert r[2].verdict.pairwise == "tie"
    assert r[3].error.startswith("unparseable output")
    card = scorecard(r)
    assert card.n_errors == 2 and card.n_spec_failed == 1 and card.n_scored == 27
    assert "2 errors" in capsys.readouterr().out


def test_bad_candidate_files_are_refused_with_file_line_key(ruler, tmp_path, capsys):
    root, cases = ruler
    rows = gold_candidates(cases)
    base = ["--ruler-dir", str(root), "--candidates"]
    path = write_jsonl(tmp_path / "missing.jsonl", rows[:-2])
    assert judge_main(base + [str(path)]) == 2
    assert "no line for 2 ruler case(s): ruler-29, ruler-30" in capsys.readouterr().err
    out = tmp_path / "judged.jsonl"
    assert judge_main(base + [str(path), "--allow-missing", "--out", str(out)]) == 0
    assert read_records(out)[-1].error == "no candidate for this case"
    capsys.readouterr()
    path = write_jsonl(tmp_path / "unknown.jsonl", rows[:3] + [{"id": "ruler-99",
                                                                "candidate": rows[0]["candidate"]}])
    assert judge_main(base + [str(path)]) == 1       # scored wrong, not malformed: exit 1
    assert f"{path}:4: key 'id': 'ruler-99' is not a ruler case" in capsys.readouterr().err
    path = write_jsonl(tmp_path / "twice.jsonl", rows + [rows[0]])
    assert judge_main(base + [str(path)]) == 1
    assert f"{path}:31: case ruler-01 already given at {path}:1" in capsys.readouterr().err
    path = write_jsonl(tmp_path / "ok.jsonl", rows)
    assert judge_main(base + [str(path), "--swap"]) == 2
    assert "anthropic judge only" in capsys.readouterr().err


def test_score_by_experiment_baseline_and_compare(ruler, tmp_path, capsys):
    root, cases = ruler
    good = tmp_path / "good.jsonl"
    judge_main(["--candidates", str(write_jsonl(tmp_path / "g.jsonl", gold_candidates(cases))),
                "--out", str(good), "--experiment", "gold", "--ruler-dir", str(root)])
    dup_rows = []
    for c in cases:
        t = list(c.gold.questions)
        dup_rows.append({"id": c.id, "candidate": replace(c.gold, questions=tuple(
            t[:5] + [t[0], t[1]])).to_dict()})
    worse = tmp_path / "worse.jsonl"
    judge_main(["--candidates", str(write_jsonl(tmp_path / "d.jsonl", dup_rows)),
                "--out", str(worse), "--experiment", "dups", "--ruler-dir", str(root)])
    both = tmp_path / "both.jsonl"
    both.write_text(good.read_text() + worse.read_text())
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert score_main(["--records", str(both), "--by", "experiment", "--baseline", "gold",
                       "--ruler-dir", str(root), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "Scorecard: gold" in text and "Scorecard: dups" in text
    assert "distinguishable from case-sampling noise" in text
    data = json.loads(report.read_text())
    assert [s["label"] for s in data["scorecards"]] == ["gold", "dups"]
    (cmp_,) = data["comparisons"]
    assert cmp_["mean_diff"] < 0 and cmp_["distinguishable"] and cmp_["a_better"] == 30
    assert score_main(["--records", str(good), "--compare", str(good),
                       "--ruler-dir", str(root)]) == 0
    assert "NOT distinguishable" in capsys.readouterr().out


def test_anthropic_judge_through_the_cli_caches_and_exports(ruler, tmp_path, monkeypatch, capsys):
    root, cases = ruler
    cands = write_jsonl(tmp_path / "c.jsonl", gold_candidates(cases))
    cache = tmp_path / "judge-cache.sqlite"
    out = tmp_path / "judged.jsonl"
    args = ["--candidates", str(cands), "--judge", "anthropic", "--swap", "--cache", str(cache),
            "--concurrency", "4", "--out", str(out), "--ruler-dir", str(root)]
    with FakeAnthropic(api_key=KEY) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        assert judge_main(args) == 0
        assert len(srv.message_requests()) == 60            # 30 cases x both orders
        records = read_records(out)
        assert all(r.verdict.pairwise == "tie" and r.judge.startswith("anthropic:")
                   for r in records)
        assert scorecard(records).headline == pytest.approx(0.5)   # 0.5*(3-1)/4 + 0.5*0.5
        srv.reset_log()
        assert judge_main(args) == 0
        assert srv.message_requests() == []                 # re-scoring is free
        text = capsys.readouterr().out
        assert "0.500" in text and "proxy" not in text and KEY not in text
        exported = tmp_path / "exported.jsonl"
        assert judge_main(["export-records", "--cache", str(cache), "--out", str(exported)]) == 0
        ex = read_records(exported)
        assert len(ex) == 30 and {r.input for r in ex} == {c.input for c in cases}


def test_judge_errors_are_recorded_not_scored_and_exit_nonzero(ruler, tmp_path, monkeypatch,
                                                               capsys):
    root, cases = ruler
    cands = write_jsonl(tmp_path / "c.jsonl", gold_candidates(cases))
    out = tmp_path / "judged.jsonl"
    with FakeAnthropic(api_key=KEY) as srv:
        srv.script(f"User's task: {cases[4].input}", Fault.no_tool_call(times=None))
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        rc = judge_main(["--candidates", str(cands), "--judge", "anthropic", "--out", str(out),
                         "--cache", str(tmp_path / "cache.sqlite"), "--ruler-dir", str(root)])
    assert rc == 1
    r = read_records(out)[4]
    assert r.verdict is None and r.error_kind == "judge" and "malformed" in r.error
    assert "could not be judged" in capsys.readouterr().out


def test_module_entry_points_have_help():
    for mod, flag in (("eval.judge", "--candidates"), ("eval.score", "--records")):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and flag in r.stdout
    r = subprocess.run([sys.executable, "-m", "eval.judge", "export-records", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--cache" in r.stdout


def test_missing_api_key_is_a_clear_error_before_any_work(ruler, tmp_path, monkeypatch, capsys):
    root, cases = ruler
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cands = write_jsonl(tmp_path / "c.jsonl", gold_candidates(cases))
    assert judge_main(["--candidates", str(cands), "--judge", "anthropic",
                       "--ruler-dir", str(root)]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err
    assert judge_main(["export-records", "--cache", str(tmp_path / "none.sqlite"),
                       "--out", str(tmp_path / "x.jsonl")]) == 2
