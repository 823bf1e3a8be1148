"""The frozen ruler: verify, freeze, version bumps, and scoring refusing an edited ruler."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import eval.ruler as ruler_mod
from eval.ruler import (DEFAULT_RULER_DIR, RulerError, freeze, load_ruler, read_manifest,
                        verify_ruler)
from eval.ruler.__main__ import main as ruler_main

try:
    from tests.fakes import FakeAnthropic
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import FakeAnthropic

REPO = DEFAULT_RULER_DIR.parent.parent


@pytest.fixture
def ruler_copy(tmp_path):
    """A frozen temporary copy of the repository's ruler cases."""
    root = tmp_path / "ruler"
    shutil.copytree(DEFAULT_RULER_DIR / "cases", root / "cases")
    freeze(root)
    return root


def flip_one_byte(path):
    data = bytearray(path.read_bytes())
    i = data.index(b"?")             # inside a question title: still valid JSON
    data[i] = ord("!")
    path.write_bytes(bytes(data))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_the_repository_ruler_is_frozen_and_verifies():
    info = verify_ruler()
    cases, info2 = load_ruler()
    assert len(cases) == 30 and info == info2 and info.version >= 1
    assert len({c.id for c in cases}) == 30


def test_fresh_freeze_then_verify(ruler_copy):
    info = verify_ruler(ruler_copy)
    m = read_manifest(ruler_copy)
    assert info.version == 1 and m["n_cases"] == 30 and len(m["cases"]) == 30
    assert m["judge_prompt_hash"] == ruler_mod.JUDGE_PROMPT_HASH
    cases, info2 = load_ruler(ruler_dir=ruler_copy)
    assert info2.hash == info.hash and [c.id for c in cases][:2] == ["ruler-01", "ruler-02"]


def test_editing_one_byte_fails_verify_and_scoring(ruler_copy, tmp_path):
    target = ruler_copy / "cases" / "ruler-07.json"
    flip_one_byte(target)
    with pytest.raises(RulerError, match=r"cases/ruler-07\.json: changed"):
        verify_ruler(ruler_copy)
    with pytest.raises(RulerError):
        load_ruler(ruler_dir=ruler_copy)
    assert load_ruler(verify=False, ruler_dir=ruler_copy)[1].version == 1
    # the CLI says which file and exits non-zero
    r = run_cli("eval.ruler", "verify", "--ruler-dir", str(ruler_copy))
    assert r.returncode == 1 and "ruler-07.json" in r.stderr and "changed" in r.stderr
    # scoring refuses to run on it: eval.score and eval.judge
    records = tmp_path / "records.jsonl"
    case = load_ruler(verify=False, ruler_dir=ruler_copy)[0][0]
    records.write_text(json.dumps({
        "input": case.input, "gold": case.gold.to_dict(), "candidate": case.gold.to_dict(),
        "spec": {"passed": True, "violations": []},
        "verdict": {"pairwise": "tie", "rubric": {d: 3 for d in ruler_mod.RUBRIC_DIMENSIONS},
                    "notes": ""}}) + "\n")
    r = run_cli("eval.score", "--records", str(records), "--ruler-dir", str(ruler_copy))
    assert r.returncode == 1 and "ruler-07.json" in r.stderr
    assert "QUALITY" not in r.stdout
    cands = tmp_path / "cands.jsonl"
    cands.write_text(json.dumps({"id": case.id, "candidate": case.gold.to_dict()}) + "\n")
    r = run_cli("eval.judge", "--candidates", str(cands), "--judge", "offline",
                env={"FMDISTILL_RULER_DIR": str(ruler_copy)})
    assert r.returncode == 1 and "ruler-07.json" in r.stderr


def test_added_and_removed_case_files_are_named(ruler_copy, capsys):
    shutil.copy(ruler_copy / "cases" / "ruler-01.json", ruler_copy / "cases" / "ruler-31.json")
    (ruler_copy / "cases" / "ruler-05.json").unlink()
    assert ruler_main(["verify", "--ruler-dir", str(ruler_copy)]) == 1
    err = capsys.readouterr().err
    assert "cases/ruler-31.json: added" in err and "cases/ruler-05.json: removed" in err


def test_hand_edited_manifest_and_changed_judge_prompt_are_caught(ruler_copy, monkeypatch):
    path = ruler_copy / "manifest.json"
    good = path.read_text()
    m = json.loads(good)
    m["cases"]["ruler-03.json"] = "0" * 64
    path.write_text(json.dumps(m))
    with pytest.raises(RulerError, match="ruler-03.json: changed|edited by hand"):
        verify_ruler(ruler_copy)
    path.write_text(good)
    verify_ruler(ruler_copy)
    monkeypatch.setattr(ruler_mod, "JUDGE_PROMPT_HASH", "f" * 64)
    with pytest.raises(RulerError, match="judge prompt"):
        verify_ruler(ruler_copy)


def test_freeze_is_the_only_way_and_bumps_the_version(ruler_copy):
    before = verify_ruler(ruler_copy)
    assert not freeze(ruler_copy).changed                  # nothing changed: no bump
    path = ruler_copy / "cases" / "ruler-02.json"
    obj = json.loads(path.read_text())
    obj["gold"]["questions"][0]["title"] = "On what date should the surprise party happen?"
    path.write_text(json.dumps(obj, indent=2))
    with pytest.raises(RulerError):
        verify_ruler(ruler_copy)
    res = freeze(ruler_copy, note="reworded ruler-02 q1")
    assert res.changed and res.info.version == 2 and res.info.hash != before.hash
    assert any("ruler-02.json: changed" in c for c in res.changes)
    assert verify_ruler(ruler_copy).version == 2
    history = read_manifest(ruler_copy)["history"]
    assert [h["version"] for h in history] == [1, 2] and history[1]["note"] == "reworded ruler-02 q1"


def test_freeze_refuses_spec_failures_unreviewed_gold_and_wrong_count(ruler_copy, capsys):
    path = ruler_copy / "cases" / "ruler-04.json"
    original = path.read_text()
    obj = json.loads(original)
    obj["gold"]["taskTitle"] = "Clarifying questions"
    path.write_text(json.dumps(obj))
    assert ruler_main(["freeze", "--ruler-dir", str(ruler_copy)]) == 1
    err = capsys.readouterr().err
    assert "ruler-04.json" in err and "spec gate" in err and "generic label" in err
    obj = json.loads(original)
    obj["reviewed"] = False
    path.write_text(json.dumps(obj))
    with pytest.raises(RulerError, match="ruler-04.json: teacher gold not reviewed"):
        freeze(ruler_copy)
    path.write_text(original)
    (ruler_copy / "cases" / "ruler-30.json").unlink()
    with pytest.raises(RulerError, match="29 case files, expected exactly 30"):
        freeze(ruler_copy)
    assert read_manifest(ruler_copy)["ruler_version"] == 1
    res = freeze(ruler_copy, allow_count=True)
    assert res.info.version == 2 and read_manifest(ruler_copy)["n_cases"] == 29


def test_ruler_dir_from_environment(ruler_copy, monkeypatch):
    monkeypatch.setenv("FMDISTILL_RULER_DIR", str(ruler_copy))
    cases, info = load_ruler()
    assert info.path == ruler_copy and len(cases) == 30


def test_build_makes_reviewable_cases_through_the_teacher(ruler_copy, tmp_path, monkeypatch,
                                                          capsys):
    tasks = tmp_path / "new.jsonl"
    tasks.write_text(json.dumps({"id": "ruler-31", "input": "Repaint the kids' bedroom"}) + "\n"
                     + json.dumps({"id": "ruler-32", "input": "Plan a beach wedding in Maui"})
                     + "\n")
    out = tmp_path / "staged"
    with FakeAnthropic(api_key="sk-test-ruler-build") as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-ruler-build")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        rc = ruler_main(["build", "--ruler-dir", str(ruler_copy), "--tasks", str(tasks),
                         "--out-dir", str(out), "--cache", str(tmp_path / "cache.sqlite"),
                         "--concurrency", "2"])
        assert rc == 0, capsys.readouterr()
        assert len(srv.message_requests()) == 2
    made = sorted(out.glob("ruler-3*.json"))
    assert [p.name for p in made] == ["ruler-31.json", "ruler-32.json"]
    obj = json.loads(made[0].read_text())
    assert obj["reviewed"] is False and obj["input"] == "Repaint the kids' bedroom"
    assert len(obj["gold"]["questions"]) == 7
    for p in made:
        shutil.copy(p, ruler_copy / "cases" / p.name)
    with pytest.raises(RulerError, match="not reviewed"):
        freeze(ruler_copy, allow_count=True)
    for p in made:
        target = ruler_copy / "cases" / p.name
        o = json.loads(target.read_text())
        o["reviewed"] = True
        target.write_text(json.dumps(o, indent=2))
    res = freeze(ruler_copy, allow_count=True)
    assert res.info.version == 2 and read_manifest(ruler_copy)["n_cases"] == 32
    # a task already on the ruler is refused before any request
    tasks.write_text(json.dumps({"id": "x", "input": "plan my Paris trip!"}) + "\n")
    assert ruler_main(["build", "--ruler-dir", str(ruler_copy), "--tasks", str(tasks),
                       "--out-dir", str(out)]) == 1
    assert "already on the ruler" in capsys.readouterr().err
