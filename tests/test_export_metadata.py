"""metadata.json: serialisation, identifier, stand-in provenance, and no paths or secrets."""
from __future__ import annotations

import hashlib
import json

import pytest

from export import metadata as md
from export.fmadapter import main
from export.synthetic import synthetic_standin_run

SECRET = "sk-ant-api03-THIS-IS-A-TEST-KEY-0123456789abcdef"


def test_serialisation_matches_the_toolkit():
    meta = md.build("café_planner", "9799725ff8e851184037110b422d891ad3b92ec1", 32,
                    description="Pläne für 7 Fragen ✓", creator_defined={"b": 1, "a": {"z": 2}})
    raw = md.serialize(meta)
    text = raw.decode("utf-8")
    assert "Pläne für 7 Fragen ✓" in text and "\\u" not in text  # non-ASCII kept as is
    assert not text.endswith("\n")
    assert text.splitlines()[1] == '    "adapterIdentifier": "fmadapter-café_planner-9799725",'
    assert list(json.loads(text)) == sorted(meta)
    assert text.index('"a"') < text.index('"b"') and '        "a": {' in text
    assert md.check(meta) == []


def test_check_names_bad_keys_and_types():
    meta = md.build("x", "9799725ff8e851184037110b422d891ad3b92ec1", 32)
    meta["loraRank"] = "32"
    meta["extra"] = 1
    del meta["license"]
    meta["baseModelSignature"] = "XYZ"
    problems = "\n".join(md.check(meta))
    for needle in ("'loraRank' should be int", "unexpected key 'extra'", "missing key 'license'",
                   "not 40 lowercase hex"):
        assert needle in problems


@pytest.mark.parametrize("value,path_like", [
    ("/home/dev/runs/sft", True), ("~/runs", True), ("./runs/x", True), ("C:\\runs", True),
    ("runs/sft-tiny/adapter", True), ("file:///tmp/x", True), ("https://example.com/l", False),
    ("sft-20261126T013000-ab12cd", False), ("a" * 64, False), ("Plan a trip", False),
])
def test_looks_like_path(value, path_like):
    assert md.looks_like_path(value) is path_like


def test_stand_in_package_provenance_without_paths_or_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    run = synthetic_standin_run(tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    record["base_model"]["name_or_path"] = str(tmp_path / "base")
    record["data"]["train_file"] = str(tmp_path / "train.jsonl")
    record["run_id"] = f"leaky-{SECRET}"  # a secret smuggled into a provenance field
    record["metrics"] = {"ruler": {"score": 0.71, "file": str(tmp_path / "judged.jsonl")}}
    (run / "run.json").write_text(json.dumps(record))
    # A secret typed into --creator-defined is refused outright (tests/test_hostile_inputs.py).
    user = {"app": "Planner", "source": str(tmp_path / "notes.txt"),
            "nested": {"ok": [1, "two"], "where": "../secrets.env"},
            "licenseUrl": "https://example.com/license"}
    assert main(["--adapter", str(run), "--name", "planner_standin", "--out",
                 str(tmp_path / "out"), "--quiet", "--allow-stand-in",
                 "--creator-defined", json.dumps(user)]) == 0
    captured = capsys.readouterr()
    pkg = tmp_path / "out" / "planner_standin.fmadapter"
    raw = (pkg / "metadata.json").read_text(encoding="utf-8")
    cd = json.loads(raw)["creatorDefined"]
    everything = raw + captured.out + captured.err
    assert SECRET not in everything
    assert str(tmp_path) not in raw
    assert "runId" not in cd and "token" not in cd and "source" not in cd
    assert cd["nested"] == {"ok": [1, "two"]}
    assert cd["ruler"] == {"score": 0.71}
    assert cd["app"] == "Planner" and cd["licenseUrl"] == "https://example.com/license"
    assert cd["standIn"] is True and cd["layout"]["name"] == "stand-in"
    assert cd["trainSha256"] == "34" * 32 and cd["baseIdentity"] == "12" * 32
    assert "dropped runId" in captured.err
    sig = hashlib.sha256(("12" * 32).encode()).hexdigest()[:40]
    meta = json.loads(raw)
    assert meta["baseModelSignature"] == sig
    assert meta["adapterIdentifier"] == f"fmadapter-planner_standin-{sig[:7]}"
    assert meta["loraRank"] == 8
    assert "never be shipped" in captured.err
