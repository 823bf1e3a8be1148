"""The experiment log: an append-only SQLite database, one row per scored experiment.

  python -m eval.log list [--db runs/experiments.db] [--judge TEXT] [--json]
  python -m eval.log show ID [--db ...] [--cases]
  python -m eval.log invalidate ID --reason TEXT [--db ...]

`list` and `show` (and the dashboard) open the log read-only (SQLite `mode=ro`): they never create
or change a file, and a missing file or one that is not an experiment log is an error (exit 2).
Rows are only ever inserted: the code has no path that changes or removes one, and triggers in
the database refuse any attempt. Marking an experiment invalid appends an `invalidation` row that
references it; every reader (this CLI, eval.run's running best, the dashboard) folds those rows in,
so history is kept and the current view is honest.

Status, decided when the experiment is appended, inside one write transaction:
- `invalid`   a leak was detected (the adapter was trained on a ruler task) or it cannot be ruled
              out; never a running best;
- `kept`      its headline beats the running best for the same ruler (version + hash) and judge;
- `discarded` otherwise.
The running best of a (ruler version, ruler hash, judge) is the highest headline among that key's
experiments that are not invalid now (invalidations count retroactively). Judges are kept apart
by name: the offline proxy's name carries its weights hash, the anthropic judge's its model (plus
+swap / +samplesK when used), so numbers from different judges are never compared.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import stat
import sys
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DEFAULT_DB = Path("runs/experiments.db")
SCHEMA_VERSION = 1
STATUSES = ("kept", "discarded", "invalid")

# Every column an experiment row carries, in order (after id and created_at).
COLUMNS = (
    "kind", "refers_to", "label", "note", "lever", "base_model", "base_identity", "adapter",
    "adapter_hash", "adapter_run_id", "pipeline", "config_json", "config_hash", "ruler_version",
    "ruler_hash", "judge", "judge_prompt_hash", "prompt_hash", "git_commit", "headline",
    "headline_ci_lo", "headline_ci_hi", "headline_answered", "spec_pass_rate", "error_rate",
    "wins", "ties", "losses", "metrics_json", "status", "reason", "best_before",
    "comparison_json", "out_dir",
)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  created_at TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('experiment', 'invalidation')),
  refers_to INTEGER REFERENCES experiments(id),
  label TEXT, note TEXT, lever TEXT, base_model TEXT, base_identity TEXT, adapter TEXT,
  adapter_hash TEXT, adapter_run_id TEXT, pipeline TEXT, config_json TEXT, config_hash TEXT,
  ruler_version INTEGER, ruler_hash TEXT, judge TEXT, judge_prompt_hash TEXT, prompt_hash TEXT,
  git_commit TEXT, headline REAL, headline_ci_lo REAL, headline_ci_hi REAL,
  headline_answered REAL, spec_pass_rate REAL, error_rate REAL, wins INTEGER, ties INTEGER,
  losses INTEGER, metrics_json TEXT,
  status TEXT NOT NULL CHECK (status IN {STATUSES}),
  reason TEXT, best_before INTEGER, comparison_json TEXT, out_dir TEXT
);
CREATE TABLE IF NOT EXISTS case_results (
  experiment_id INTEGER NOT NULL REFERENCES experiments(id),
  position INTEGER NOT NULL,
  case_id TEXT NOT NULL,
  quality REAL NOT NULL,
  record_json TEXT NOT NULL,
  PRIMARY KEY (experiment_id, case_id)
);
CREATE TRIGGER IF NOT EXISTS experiments_append_only_u BEFORE UPDATE ON experiments
  BEGIN SELECT RAISE(ABORT, 'the experiment log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS experiments_append_only_d BEFORE DELETE ON experiments
  BEGIN SELECT RAISE(ABORT, 'the experiment log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS case_results_append_only_u BEFORE UPDATE ON case_results
  BEGIN SELECT RAISE(ABORT, 'the experiment log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS case_results_append_only_d BEFORE DELETE ON case_results
  BEGIN SELECT RAISE(ABORT, 'the experiment log is append-only'); END;
"""


class LogError(RuntimeError):
    """A request the log cannot honour (unknown id, already invalid, wrong schema)."""


@dataclass
class Experiment:
    id: int
    created_at: str
    row: dict                                   # every column as stored
    invalidated_by: int | None = None           # the invalidation row, if any
    invalid_reason: str | None = None
    metrics: dict = field(default_factory=dict)

    def __getattr__(self, name):                # row columns read as attributes
        row = self.__dict__.get("row")
        if row is not None and name in row:
            return row[name]
        raise AttributeError(name)

    @property
    def effective_status(self) -> str:
        return "invalid" if self.invalidated_by is not None else self.row["status"]

    @property
    def key(self) -> tuple:
        return (self.row["ruler_version"], self.row["ruler_hash"], self.row["judge"])

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.row.items() if not k.endswith("_json")}
        d.update(id=self.id, created_at=self.created_at, effective_status=self.effective_status,
                 invalidated_by=self.invalidated_by, invalid_reason=self.invalid_reason,
                 metrics=self.metrics,
                 config=json.loads(self.row["config_json"] or "null"),
                 comparison=json.loads(self.row["comparison_json"] or "null"))
        return d


def connect(db_path) -> sqlite3.Connection:
    """Open (creating if needed) a log; isolation is explicit (BEGIN IMMEDIATE for appends)."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(db_path), timeout=60, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
    elif int(row["value"]) != SCHEMA_VERSION:
        raise LogError(f"{db_path}: experiment log schema {row['value']}, this code reads "
                       f"{SCHEMA_VERSION}")
    return conn


SQLITE_HEADER = b"SQLite format 3\x00"


def connect_readonly(db_path) -> sqlite3.Connection:
    """Open an existing log for reading only (`mode=ro`): nothing is created, migrated or
    written, so a read command can never turn a stray file into a database. A missing file,
    a FIFO or folder, or a file that is not an experiment log is a LogError naming it."""
    db_path = Path(db_path)
    try:
        st = os.stat(db_path)
    except FileNotFoundError:
        raise LogError(f"{db_path}: no experiment log here (run python -m eval.run first)") \
            from None
    if not stat.S_ISREG(st.st_mode):
        raise LogError(f"{db_path}: not a regular file, so not an experiment log")
    # The header is checked first: SQLite would read an empty or foreign file as an empty db.
    with open(db_path, "rb") as fh:
        if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise LogError(f"{db_path}: not an experiment log (not an SQLite database)")
    uri = f"file:{urllib.parse.quote(str(db_path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "experiments", "case_results"} <= tables:
            conn.close()
            raise LogError(f"{db_path}: an SQLite database but not an experiment log (tables "
                           f"{sorted(tables)})")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as e:
        raise LogError(f"{db_path}: cannot read the experiment log ({e})") from None
    if row is not None and row["value"] != str(SCHEMA_VERSION):
        conn.close()
        raise LogError(f"{db_path}: experiment log schema {row['value']}, this code reads "
                       f"{SCHEMA_VERSION}")
    return conn


def _experiments(conn) -> list[Experiment]:
    rows = [dict(r) for r in conn.execute("SELECT * FROM experiments ORDER BY id")]
    exps = {r["id"]: Experiment(r["id"], r["created_at"], r,
                                metrics=json.loads(r["metrics_json"] or "{}"))
            for r in rows if r["kind"] == "experiment"}
    for r in rows:
        target = exps.get(r["refers_to"]) if r["kind"] == "invalidation" else None
        if target is not None and target.invalidated_by is None:
            target.invalidated_by, target.invalid_reason = r["id"], r["reason"]
    return list(exps.values())


def read_experiments(db_path) -> list[Experiment]:
    """Every experiment in run order, with invalidations folded in (read-only; none when the
    log does not exist yet)."""
    if not Path(db_path).exists():
        return []
    conn = connect_readonly(db_path)
    try:
        return _experiments(conn)
    finally:
        conn.close()


def running_best(experiments: list[Experiment], key: tuple) -> Experiment | None:
    """The best experiment of a (ruler version, ruler hash, judge) that is not invalid now."""
    valid = [e for e in experiments if e.key == tuple(key) and e.effective_status != "invalid"
             and e.row["headline"] is not None]
    return max(valid, key=lambda e: (e.row["headline"], -e.id)) if valid else None


def running_best_series(experiments: list[Experiment]) -> dict[tuple, list[tuple[int, float]]]:
    """Per key, (experiment id, best so far) at each of the key's valid experiments."""
    out: dict[tuple, list[tuple[int, float]]] = {}
    best: dict[tuple, float] = {}
    for e in experiments:
        if e.effective_status == "invalid" or e.row["headline"] is None:
            continue
        best[e.key] = max(best.get(e.key, float("-inf")), e.row["headline"])
        out.setdefault(e.key, []).append((e.id, best[e.key]))
    return out


def decide_status(headline: float, best: Experiment | None, invalid_reason: str | None) -> str:
    if invalid_reason:
        return "invalid"
    if best is None or headline > best.row["headline"] + 1e-12:
        return "kept"
    return "discarded"


def case_records(db_path_or_conn, experiment_id: int) -> list[dict]:
    """The judged records (judge/records.py format) stored with an experiment, in ruler order."""
    own = not isinstance(db_path_or_conn, sqlite3.Connection)
    conn = connect_readonly(db_path_or_conn) if own else db_path_or_conn
    try:
        rows = conn.execute("SELECT record_json, quality FROM case_results WHERE experiment_id = ?"
                            " ORDER BY position", (experiment_id,)).fetchall()
        return [dict(json.loads(r["record_json"]), quality=r["quality"]) for r in rows]
    finally:
        if own:
            conn.close()


@contextmanager
def _write_transaction(db_path):
    """One write transaction (BEGIN IMMEDIATE: appends are serialised): committed when the block
    ends, rolled back on any error, the connection closed either way."""
    conn = connect(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def append_experiment(db_path, entry: dict, cases: list[dict], *,
                      invalid_reason: str | None = None,
                      compare: Callable[[Experiment, list[dict]], dict | None] | None = None
                      ) -> tuple[Experiment, Experiment | None]:
    """Append one experiment; returns (it, the running best it was compared with).

    `entry` holds the columns (see COLUMNS; `metrics` as a dict); `cases` the judged records,
    each with a `case_id` and a `quality`. The status is decided and the row written in one
    write transaction, so two runs appending at once cannot both be the new best. `compare`
    (called inside it with the best and its case records) returns the paired comparison stored
    with the row.
    """
    unknown = set(entry) - set(COLUMNS) - {"metrics"}
    if unknown:
        raise LogError(f"unknown experiment field(s) {sorted(unknown)}; valid: {', '.join(COLUMNS)}")
    if entry.get("headline") is None:
        raise LogError("an experiment needs a headline")
    with _write_transaction(db_path) as conn:
        exps = _experiments(conn)
        key = (entry.get("ruler_version"), entry.get("ruler_hash"), entry.get("judge"))
        best = running_best(exps, key)
        status = decide_status(entry["headline"], best, invalid_reason)
        comparison = compare(best, case_records(conn, best.id)) if (compare and best) else None
        row = {c: entry.get(c) for c in COLUMNS}
        row.update(kind="experiment", refers_to=None, status=status, reason=invalid_reason,
                   best_before=best.id if best else None,
                   metrics_json=json.dumps(entry.get("metrics", {}), default=str),
                   comparison_json=json.dumps(comparison) if comparison is not None else None)
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        cur = conn.execute(
            f"INSERT INTO experiments (created_at, {', '.join(COLUMNS)}) VALUES "
            f"(?, {', '.join('?' for _ in COLUMNS)})", [created] + [row[c] for c in COLUMNS])
        exp_id = cur.lastrowid
        for i, rec in enumerate(cases):
            conn.execute("INSERT INTO case_results (experiment_id, position, case_id, quality, "
                         "record_json) VALUES (?, ?, ?, ?, ?)",
                         (exp_id, i, str(rec["case_id"]), float(rec["quality"]),
                          json.dumps({k: v for k, v in rec.items() if k != "quality"},
                                     ensure_ascii=False)))
        exp = next(e for e in _experiments(conn) if e.id == exp_id)
        return exp, best


def invalidate(db_path, experiment_id: int, reason: str) -> int:
    """Append an invalidation row for an experiment; returns its id."""
    if not reason or not reason.strip():
        raise LogError("invalidate needs a reason (--reason TEXT)")
    if not Path(db_path).exists():
        raise LogError(f"{db_path}: no experiment log here")
    with _write_transaction(db_path) as conn:
        target = next((e for e in _experiments(conn) if e.id == experiment_id), None)
        if target is None:
            raise LogError(f"{db_path}: no experiment #{experiment_id}")
        if target.invalidated_by is not None:
            raise LogError(f"experiment #{experiment_id} is already invalid (row "
                           f"#{target.invalidated_by}: {target.invalid_reason})")
        cur = conn.execute(
            "INSERT INTO experiments (created_at, kind, refers_to, label, status, reason, "
            "ruler_version, ruler_hash, judge) VALUES (?, 'invalidation', ?, ?, 'invalid', ?, ?, "
            "?, ?)", (time.strftime("%Y-%m-%dT%H:%M:%S%z"), experiment_id, target.row["label"],
                      reason.strip(), target.row["ruler_version"], target.row["ruler_hash"],
                      target.row["judge"]))
        return cur.lastrowid


# ---- the CLI -----------------------------------------------------------------------------------
def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def _status_text(e: Experiment, bests: set[int]) -> str:
    s = e.effective_status
    if e.invalidated_by is not None:
        s = f"invalid (was {e.row['status']}; #{e.invalidated_by})"
    return s + (" *best*" if e.id in bests else "")


def cmd_list(args) -> int:
    from rich.console import Console
    from rich.table import Table
    connect_readonly(args.db).close()          # a missing or foreign file is an error here
    exps = [e for e in read_experiments(args.db) if not args.judge or args.judge in e.judge]
    if args.json:
        print(json.dumps([e.to_dict() for e in exps], indent=2, default=str))
        return 0
    if not exps:
        print(f"no experiments in {args.db}")
        return 0
    bests = {b.id for b in (running_best(exps, k) for k in {e.key for e in exps}) if b}
    t = Table(title=f"experiments in {args.db}  (* = running best of its ruler and judge)")
    for col in ("#", "time", "label", "lever", "pipeline", "judge", "ruler", "quality",
                "95% CI", "spec", "W/T/L", "status"):
        t.add_column(col)
    for e in exps:
        ci = (f"{e.headline_ci_lo:.3f}-{e.headline_ci_hi:.3f}"
              if e.headline_ci_lo is not None else "-")
        t.add_row(str(e.id), e.created_at[:19], e.label or "", e.lever or "", e.pipeline or "",
                  e.judge or "", f"v{e.ruler_version} {str(e.ruler_hash)[:8]}",
                  _fmt(e.headline), ci, _fmt(e.spec_pass_rate, ".0%"),
                  f"{e.wins}/{e.ties}/{e.losses}", _status_text(e, bests))
    Console(width=200).print(t)
    return 0


def cmd_show(args) -> int:
    connect_readonly(args.db).close()
    exps = read_experiments(args.db)
    e = next((x for x in exps if x.id == args.id), None)
    if e is None:
        print(f"error: {args.db}: no experiment #{args.id}", file=sys.stderr)
        return 2
    d = e.to_dict()
    if args.cases:
        d["cases"] = case_records(args.db, e.id)
    print(json.dumps(d, indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_invalidate(args) -> int:
    try:
        row = invalidate(args.db, args.id, args.reason)
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"experiment #{args.id} marked invalid (row #{row}): {args.reason}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.log", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=str(DEFAULT_DB), help=f"log file (default {DEFAULT_DB})")
    pl = sub.add_parser("list", parents=[common], help="every experiment in run order")
    pl.add_argument("--judge", default=None, help="only judges whose name contains TEXT")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps = sub.add_parser("show", parents=[common], help="one experiment as JSON")
    ps.add_argument("id", type=int)
    ps.add_argument("--cases", action="store_true", help="include the per-case judged records")
    pi = sub.add_parser("invalidate", parents=[common],
                        help="mark an experiment invalid (appends a row; history is kept)")
    pi.add_argument("id", type=int)
    pi.add_argument("--reason", required=True, help="why it is invalid")
    args = p.parse_args(argv)
    try:
        return {"list": cmd_list, "show": cmd_show, "invalidate": cmd_invalidate}[args.cmd](args)
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
