"""python -m data.import_gold: existing camelCase gold through the same gate as teacher output."""
from __future__ import annotations

import json

from data.contract import load_cases, spec_violations
from data.import_gold import import_gold, main

try:
    from tests.fakes import default_discovery
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import default_discovery


def case(cid: str, task: str, **changes) -> dict:
    gold = {**default_discovery(task), **changes}
    return {"id": cid, "input": task, "gold": gold}


def write_corpus(root):
    (root / "sub").mkdir(parents=True)
    (root / "one.json").write_text(json.dumps(case("c1", "Plan a trip to Paris")))
    (root / "sub" / "list.json").write_text(json.dumps([
        case("c2", "Plan a wedding"),
        {"input": "Learn to paint", **default_discovery("Learn to paint")},   # bare result
    ]))
    six = case("c4", "Buy a car")
    six["gold"]["questions"] = six["gold"]["questions"][:6]
    lines = [json.dumps(case("c3", "Move to Berlin")),
             json.dumps(six),
             json.dumps(case("c5", "Host a dinner", taskTitle="Clarifying questions")),
             json.dumps(case("c6", "Run a marathon", taskDescription="Go \U0001F3C3 go")),
             "{not json",
             json.dumps({"id": "c8", "gold": default_discovery("x")}),            # no input
             json.dumps(case("c1", "Plan a trip to Paris")),                        # same again
             json.dumps(case("c3", "Move to Hamburg"))]                              # clash
    (root / "sub" / "more.jsonl").write_text("\n".join(lines) + "\n")
    (root / "notes.txt").write_text("ignored")


def test_import_directory_validates_and_quarantines_with_file_and_line(tmp_path):
    src = tmp_path / "src"
    write_corpus(src)
    out = tmp_path / "gold.jsonl"
    s = import_gold([src], out)
    assert (s.files, s.imported, s.quarantined, s.skipped) == (3, 4, 6, 1)
    cases = load_cases(out)
    assert sorted(c.id for c in cases)[:3] == ["c1", "c2", "c3"]
    assert all(not spec_violations(c.gold) for c in cases)
    assert {c.input for c in cases} >= {"Learn to paint", "Move to Berlin"}
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["source"].startswith("imported:") for r in raw)
    q = [json.loads(line) for line in (tmp_path / "gold.quarantine.jsonl").read_text().splitlines()]
    reasons = {r["where"]: r["reason"] for r in q}
    more = str(src / "sub" / "more.jsonl")
    assert "has 6 items, expected exactly 7" in reasons[f"{more}:2"]
    assert "generic label" in reasons[f"{more}:3"]
    assert "emoji" in reasons[f"{more}:4"]
    assert "invalid JSON" in reasons[f"{more}:5"]
    assert "'input'" in reasons[f"{more}:6"]
    assert "different answer" in reasons[f"{more}:8"]
    assert all(r["reason"].startswith(r["where"]) for r in q)       # file:line leads

    again = import_gold([src], out)                                 # idempotent
    assert again.imported == 0 and again.skipped == 5
    assert len(out.read_text().splitlines()) == 4
    assert len((tmp_path / "gold.quarantine.jsonl").read_text().splitlines()) == 6


def test_cli(tmp_path, capsys):
    f = tmp_path / "cases.jsonl"
    f.write_text(json.dumps(case("a", "Plan a hike")) + "\n")
    assert main([str(f), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "1 imported" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
