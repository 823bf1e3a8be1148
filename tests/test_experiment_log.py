"""The experiment log: append-only SQLite, kept/discarded/invalid, running best per ruler and judge."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from eval import log as explog
from eval.ruler import load_ruler

try:
    from tests.explog_helpers import log_synthetic
except ImportError:  # pytest's rootdir-relative import mode
    from explog_helpers import log_synthetic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cases():
    return load_ruler()[0]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "experiments.db"


def test_kept_discarded_and_ties(db, cases):
    first, best0 = log_synthetic(db, cases, "first", 3.0)
    assert best0 is None and first.row["status"] == "kept"
    lower, best1 = log_synthetic(db, cases, "lower", 2.0)
    assert best1.id == first.id and lower.row["status"] == "discarded"
    assert lower.headline < first.headline
    same, _ = log_synthetic(db, cases, "same", 3.0)          # equal is not a beat
    assert same.headline == pytest.approx(first.headline) and same.row["status"] == "discarded"
    higher, best3 = log_synthetic(db, cases, "higher", 4.0)
    assert best3.id == first.id and higher.row["status"] == "kept"
    exps = explog.read_experiments(db)
    assert [e.label for e in exps] == ["first", "lower", "same", "higher"]
    assert explog.running_best(exps, higher.key).id == higher.id
    assert higher.row["best_before"] == first.id


def test_separate_bests_per_judge_and_ruler_version(db, cases):
    a, _ = log_synthetic(db, cases, "offline-strong", 4.0, judge="offline@aaaa")
    # A weaker result under another judge is that judge's first result: kept.
    b, best_b = log_synthetic(db, cases, "sonnet-weak", 2.0, judge="anthropic:sonnet")
    assert best_b is None and b.row["status"] == "kept" and b.headline < a.headline
    # The same judge on a new ruler version (or hash) starts its own running best.
    r2 = {"version": 2, "hash": "ruler-hash-2"}
    c, best_c = log_synthetic(db, cases, "offline-ruler2", 2.0, judge="offline@aaaa", ruler=r2)
    assert best_c is None and c.row["status"] == "kept"
    d, best_d = log_synthetic(db, cases, "offline-again", 3.0, judge="offline@aaaa")
    assert best_d.id == a.id and d.row["status"] == "discarded"
    e, best_e = log_synthetic(db, cases, "sonnet-better", 3.0, judge="anthropic:sonnet")
    assert best_e.id == b.id and e.row["status"] == "kept"
    exps = explog.read_experiments(db)
    assert {k: b_.label for k in {x.key for x in exps}
            for b_ in [explog.running_best(exps, k)]} == {
        (1, "ruler-hash-1", "offline@aaaa"): "offline-strong",
        (1, "ruler-hash-1", "anthropic:sonnet"): "sonnet-better",
        (2, "ruler-hash-2", "offline@aaaa"): "offline-ruler2"}
    # Same version number but another hash is another ruler too.
    f, best_f = log_synthetic(db, cases, "hash-edit", 1.5, judge="offline@aaaa",
                              ruler={"version": 2, "hash": "ruler-hash-2b"})
    assert best_f is None and f.row["status"] == "kept"


def test_leak_is_invalid_and_never_the_best(db, cases):
    base, _ = log_synthetic(db, cases, "base", 2.0)
    leaked, _ = log_synthetic(db, cases, "leaked", 5.0, invalid_reason="leak: ruler-03 in data")
    assert leaked.row["status"] == "invalid" and leaked.row["reason"].startswith("leak:")
    assert leaked.headline > base.headline
    nxt, best = log_synthetic(db, cases, "next", 3.0)
    assert best.id == base.id and nxt.row["status"] == "kept"


def test_invalidate_appends_and_every_reader_folds_it_in(db, cases, capsys):
    a, _ = log_synthetic(db, cases, "a", 2.0)
    b, _ = log_synthetic(db, cases, "b", 4.0)
    before = dict(explog.read_experiments(db)[1].row)
    assert explog.main(["invalidate", str(b.id), "--reason", "judge cache was stale",
                        "--db", str(db)]) == 0
    assert "marked invalid" in capsys.readouterr().out
    exps = explog.read_experiments(db)
    b_now = next(e for e in exps if e.id == b.id)
    assert b_now.row == before                       # history kept: the row itself is untouched
    assert b_now.effective_status == "invalid" and b_now.invalid_reason == "judge cache was stale"
    conn = sqlite3.connect(db)
    kinds = [r[0] for r in conn.execute("SELECT kind FROM experiments ORDER BY id")]
    assert kinds == ["experiment", "experiment", "invalidation"]
    # The running best falls back to `a`: a run between a and b is now a new best.
    c, best = log_synthetic(db, cases, "c", 3.0)
    assert best.id == a.id and c.row["status"] == "kept"
    series = explog.running_best_series(explog.read_experiments(db))
    assert [i for i, _ in series[a.key]] == [a.id, c.id]
    # Refusals: twice, unknown id, no reason.
    assert explog.main(["invalidate", str(b.id), "--reason", "again", "--db", str(db)]) == 2
    assert "already invalid" in capsys.readouterr().err
    assert explog.main(["invalidate", "999", "--reason", "x", "--db", str(db)]) == 2
    assert "no experiment #999" in capsys.readouterr().err
    with pytest.raises(explog.LogError, match="needs a reason"):
        explog.invalidate(db, a.id, "  ")


def test_list_and_show(db, cases, capsys):
    a, _ = log_synthetic(db, cases, "listed-a", 2.0)
    b, _ = log_synthetic(db, cases, "listed-b", 4.0, spec_fail_every=5)
    assert explog.main(["list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "listed-a" in out and "listed-b" in out and "*best*" in out
    assert explog.main(["list", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in rows] == ["listed-a", "listed-b"]
    assert rows[1]["effective_status"] == "kept" and rows[1]["spec_pass_rate"] < 1.0
    assert explog.main(["show", str(b.id), "--db", str(db), "--cases"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["label"] == "listed-b" and len(shown["cases"]) == 30
    assert shown["comparison"]["n"] == 30
    assert shown["comparison"]["mean_diff"] == pytest.approx(b.headline - a.headline)
    assert shown["cases"][0]["spec"]["passed"] is False
    assert explog.main(["show", "77", "--db", str(db)]) == 2


def test_database_refuses_updates_and_deletes(db, cases):
    log_synthetic(db, cases, "x", 2.0)
    conn = sqlite3.connect(db)
    for sql in ("UPDATE experiments SET status = 'kept'", "DELETE FROM experiments",
                "UPDATE case_results SET quality = 1", "DELETE FROM case_results"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)


def test_code_has_no_update_or_delete_statement():
    """Append-only by construction: no module of the loop writes an UPDATE or DELETE statement."""
    statement = re.compile(r"\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bINSERT\s+OR\s+REPLACE\b"
                           r"|\bREPLACE\s+INTO\b|\bDROP\s+TABLE\b", re.I)
    for rel in ("eval/log.py", "eval/run.py", "eval/experiment.py", "eval/dashboard.py"):
        text = (REPO / rel).read_text(encoding="utf-8")
        assert not statement.search(text), f"{rel} contains a statement that rewrites the log"


def test_append_rejects_unknown_columns(db):
    with pytest.raises(explog.LogError, match="unknown experiment field"):
        explog.append_experiment(db, {"headline": 0.1, "colour": "red"}, [])
