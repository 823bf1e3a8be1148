"""Convert a published judged run (the seed project's research log) into judged-record JSONL.

    python -m judge.published --results DIR|FILE [...] --gold DIR --out records.jsonl

The published layout, one experiment per file:

    results/<experiment>.json   a JSON array of
        {"id", "input", "spec": {"passed", "violations"}, "candidate": {taskTitle, ...},
         "verdict": {"rubric": {atomicity, ...}, "pairwise": goldBetter|tie|fmBetter, "notes"}}
        or {"id", "input", "error", ...} for a case whose generation failed
    gold/<id>.json              {"id", "input", "gold": {taskTitle, taskDescription, questions}}

Each element becomes one judge.records line: experiment = the file's stem, case_id = id, gold from
gold/<id>.json, spec and verdict as published; error elements stay errors (they score 0). The
file is pretty-printed JSON, so every element is located by the line its object starts on: a
malformed one is reported as file:line and key, and the command exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.contract import ContractError, DiscoveryResult
from judge.records import JudgedRecord, RecordError, record_from_dict, write_records


class PublishedError(RecordError):
    """A published results or gold file is malformed; the message names file:line and key."""


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def array_elements(path: Path) -> list[tuple[str, object]]:
    """(file:line, element) for each element of the top-level JSON array in `path`.

    Decoded element by element (raw_decode) so each one knows the line it starts on; the
    published files are one array per experiment, pretty-printed.
    """
    text = path.read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    if i >= len(text) or text[i] != "[":
        raise PublishedError(f"{path}:{_line(text, i)}: expected a JSON array of judged cases")
    i += 1
    out = []
    while True:
        while i < len(text) and text[i] in ws:
            i += 1
        if i < len(text) and text[i] == "]" and not out:
            i += 1
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise PublishedError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})"
                                 ) from None
        out.append((f"{path}:{_line(text, i)}", obj))
        i = end
        while i < len(text) and text[i] in ws:
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i < len(text) and text[i] == "]":
            i += 1
            break
        raise PublishedError(f"{path}:{_line(text, i)}: expected ',' or ']' after an element")
    if text[i:].strip():
        raise PublishedError(f"{path}:{_line(text, i)}: unexpected text after the array")
    return out


def read_gold_dir(folder) -> dict[str, tuple[str, DiscoveryResult]]:
    """id -> (input, gold result) from every gold/<id>.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishedError(f"{folder}: no such gold folder")
    golds = {}
    for f in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PublishedError(f"{f}:{e.lineno}: invalid JSON ({e.msg})") from None
        where = f"{f}:1"
        if not isinstance(obj, dict):
            raise PublishedError(f"{where}: expected a JSON object with 'id', 'input', 'gold'")
        for key in ("id", "input"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise PublishedError(f"{where}: missing or empty key '{key}'")
        if obj["id"] != f.stem:
            raise PublishedError(f"{where}: key 'id' is {obj['id']!r} but the file is {f.name}")
        try:
            gold = DiscoveryResult.from_dict(obj.get("gold"), where=f"{where}: key 'gold'",
                                             exact_questions=None)
        except ContractError as e:
            raise PublishedError(str(e)) from None
        golds[obj["id"]] = (obj["input"].strip(), gold)
    if not golds:
        raise PublishedError(f"{folder}: no gold/<id>.json files")
    return golds


def convert_element(obj, where: str, experiment: str,
                    golds: dict[str, tuple[str, DiscoveryResult]]) -> JudgedRecord:
    if not isinstance(obj, dict):
        raise PublishedError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    case_id = obj.get("id")
    if not isinstance(case_id, str) or not case_id:
        raise PublishedError(f"{where}: missing or empty key 'id'")
    if case_id not in golds:
        raise PublishedError(f"{where}: key 'id': no gold/{case_id}.json for this case")
    gold_input, gold = golds[case_id]
    inp = obj.get("input")
    if not isinstance(inp, str) or not inp.strip():
        raise PublishedError(f"{where}: missing or empty key 'input'")
    if inp.strip() != gold_input:
        raise PublishedError(f"{where}: key 'input' {inp.strip()!r} differs from "
                             f"gold/{case_id}.json's {gold_input!r}")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error, ensure_ascii=False, sort_keys=True)
    row = {"input": inp.strip(), "gold": gold.to_dict(), "candidate": obj.get("candidate"),
           "spec": obj.get("spec"), "verdict": obj.get("verdict"), "experiment": experiment,
           "case_id": case_id}
    if error is not None:
        row["error"] = error
        if not isinstance(row["spec"], dict):
            row["spec"] = None
        if not isinstance(row["candidate"], dict):
            row["candidate"] = None
    try:
        return record_from_dict(row, where)
    except RecordError as e:      # already names file:line and key; one error type for callers
        raise PublishedError(str(e)) from None


def convert_file(path, golds) -> list[JudgedRecord]:
    path = Path(path)
    records = [convert_element(obj, where, path.stem, golds)
               for where, obj in array_elements(path)]
    seen = {}
    for r in records:
        if r.case_id in seen:
            raise PublishedError(f"{r.where}: key 'id': case {r.case_id!r} already appears at "
                                 f"{seen[r.case_id]}")
        seen[r.case_id] = r.where
    return records


def result_files(paths) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise PublishedError(f"{p}: no such results file or folder")
    if not files:
        raise PublishedError(f"{', '.join(map(str, paths))}: no results/*.json files")
    return files


def convert(results, gold_dir) -> list[JudgedRecord]:
    golds = read_gold_dir(gold_dir)
    out = []
    for f in result_files(results):
        out += convert_file(f, golds)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m judge.published", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", required=True,
                   help="published results/<experiment>.json files or folders of them")
    p.add_argument("--gold", required=True, help="the published gold/ folder")
    p.add_argument("--out", required=True, help="judged-records JSONL to write")
    args = p.parse_args(argv)
    try:
        records = convert(args.results, args.gold)
    except (RecordError, OSError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_records(args.out, records)
    experiments = {}
    for r in records:
        experiments.setdefault(r.experiment, [0, 0])
        experiments[r.experiment][0] += 1
        experiments[r.experiment][1] += r.errored
    n_err = sum(e for _, e in experiments.values())
    print(f"wrote {args.out}: {len(records)} records from {len(experiments)} experiment(s), "
          f"{n_err} error record(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
