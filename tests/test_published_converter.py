"""judge.published: the seed project's published run layout -> judged-record JSONL.

The fixture under tests/fixtures/published/ is hand-written in the published shape (pretty-printed
arrays, camelCase keys, goldBetter/tie/fmBetter, an error element, a spec failure).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from judge.records import read_records
from judge.verdict import GOLD_BETTER, TIE
from judge.published import PublishedError, array_elements, convert, main

FIXTURE = Path(__file__).parent / "fixtures" / "published"


def test_converts_every_element_with_experiment_case_and_gold(tmp_path):
    out = tmp_path / "records.jsonl"
    assert main(["--results", str(FIXTURE / "results"), "--gold", str(FIXTURE / "gold"),
                 "--out", str(out)]) == 0
    records = read_records(out)
    assert [(r.experiment, r.case_id) for r in records] == [
        ("exp_small", "plant_tree"), ("exp_small", "fix_bike"),
        ("exp_spec", "fix_bike"), ("exp_spec", "plant_tree")]
    judged, errored, failed, tie = records
    assert judged.verdict.pairwise == GOLD_BETTER and judged.verdict.rubric["coverage"] == 3
    assert judged.gold.task_title == "Plant a Tree" and len(judged.gold.questions) == 3
    assert errored.errored and errored.error == "generation timed out" and errored.candidate is None
    assert not failed.spec_passed and failed.violations == ["expected 2 questions, got 1"]
    assert failed.verdict is None
    assert tie.verdict.pairwise == TIE and tie.candidate.questions[0].title.startswith("What type")


def test_elements_know_the_line_they_start_on():
    where = [w for w, _ in array_elements(FIXTURE / "results" / "exp_small.json")]
    assert where == [f"{FIXTURE / 'results' / 'exp_small.json'}:2",
                     f"{FIXTURE / 'results' / 'exp_small.json'}:44"]


def _copy(tmp_path) -> tuple[Path, Path]:
    shutil.copytree(FIXTURE, tmp_path / "pub")
    return tmp_path / "pub" / "results", tmp_path / "pub" / "gold"


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("edit, line, key", [
    (lambda d: d[1].pop("id"), 23, "'id'"),
    (lambda d: d[1].update(id="unknown_case"), 23, "no gold/unknown_case.json"),
    (lambda d: d[1]["verdict"].update(pairwise="maybe"), 23, "'verdict.pairwise'"),
    (lambda d: d[1]["verdict"]["rubric"].update(coverage=9), 23, "'verdict.rubric.coverage'"),
    (lambda d: d[1].update(input="Something else"), 23, "'input'"),
    (lambda d: d[1]["spec"].pop("passed"), 23, "'spec.passed'"),
    (lambda d: d[1]["candidate"].pop("questions"), 23, "'questions'"),
    (lambda d: d.append(dict(d[1])), 63, "already appears"),
])
def test_malformed_element_is_refused_with_file_line_and_key(tmp_path, edit, line, key):
    results, gold = _copy(tmp_path)
    target = results / "exp_spec.json"
    _rewrite(target, edit)
    with pytest.raises(PublishedError) as e:
        convert([results], gold)
    assert f"{target}:{line}" in str(e.value) and key in str(e.value)


def test_cli_reports_malformed_input_without_a_traceback(tmp_path, capsys):
    results, gold = _copy(tmp_path)
    (results / "exp_small.json").write_text('[\n  {"id": "plant_tree",\n  oops\n]\n')
    assert main(["--results", str(results), "--gold", str(gold),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{results / 'exp_small.json'}:3" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_gold_file_must_match_its_name_and_the_contract(tmp_path):
    results, gold = _copy(tmp_path)
    _rewrite(gold / "fix_bike.json", lambda d: d.update(id="bike"))
    with pytest.raises(PublishedError, match=r"fix_bike.json:1: key 'id'"):
        convert([results], gold)
    results, gold = _copy(tmp_path / "again")
    _rewrite(gold / "fix_bike.json", lambda d: d["gold"].pop("taskTitle"))
    with pytest.raises(PublishedError, match=r"fix_bike.json:1: key 'gold'.*taskTitle"):
        convert([results], gold)
