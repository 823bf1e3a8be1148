"""prefs.build: pair selection (margin, cap, mix), output formats, leak guard, student sampling,
and the anthropic judge through the fake Messages API (shared verdict cache)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.contract import (DiscoveryResult, Question, parse_assistant, planner_messages,
                           render_assistant)
from data.corpus import REFERENCES_DIR, reference_cases, ruler_cases
from prefs.build import PrefsOptions, build_prefs, main
from prefs.pairs import GOLD, ON_POLICY, Candidate, select_pairs
from judge.judges import get_judge
from judge.verdict import Verdict

try:
    from tests.fakes import FakeAnthropic, judge_sets
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import FakeAnthropic, judge_sets

DIMS = ("atomicity", "specificity", "coverage", "naturalness", "nonRedundancy")
GOLD_RESULT = reference_cases()[0].gold


def cand(kind: str, score: float, spec: list[str] | None = None) -> Candidate:
    """A candidate whose case quality is exactly `score`: above 0.75 via a win, 0.25..0.75 via
    a tie, below 0.25 via a loss."""
    if spec:
        return Candidate(kind, GOLD_RESULT, spec=spec)
    if score > 0.75:
        verdict = Verdict("candidate", {d: 1 + 4 * (2 * score - 1) for d in DIMS})
    elif score >= 0.25:
        verdict = Verdict("tie", {d: 1 + 4 * (2 * score - 0.5) for d in DIMS})
    else:
        verdict = Verdict("gold", {d: 1 + 4 * (2 * score) for d in DIMS})
    c = Candidate(kind, GOLD_RESULT, verdict=verdict)
    assert c.score == pytest.approx(score)
    return c


def test_margin_and_cap_are_respected():
    gold = cand(GOLD, 0.7)
    others = [cand("drop-critical", s) for s in (0.65, 0.62, 0.5, 0.4)] + \
             [cand(ON_POLICY, s) for s in (0.69, 0.55, 0.3, 0.1)]
    pairs = select_pairs([gold, *others], margin=0.1, cap=3, synthetic_share=0.5)
    assert len(pairs) == 3
    assert all(ch is gold for ch, _ in pairs)
    assert all(ch.score - rj.score >= 0.1 - 1e-9 for ch, rj in pairs)
    # 3 x 0.5 rounds up to 2 synthetic slots; the closest eligible rejections come first
    assert sorted(rj.score for _, rj in pairs) == pytest.approx([0.4, 0.5, 0.55])
    for cap in (1, 2, 5, 8):
        got = select_pairs([gold, *others], margin=0.1, cap=cap, synthetic_share=0.5)
        assert len(got) == min(cap, 5)       # 5 candidates are at least 0.1 below the gold


def test_nothing_within_the_margin():
    gold = cand(GOLD, 0.7)
    pairs = select_pairs([gold, cand("compound", 0.65), cand(ON_POLICY, 0.61)], margin=0.1,
                         cap=4, synthetic_share=0.5)
    assert pairs == []


@pytest.mark.parametrize("share,n_syn,n_on", [(0.0, 0, 3), (1.0, 4, 0), (0.5, 2, 2),
                                              (0.25, 1, 3)])
def test_synthetic_share(share, n_syn, n_on):
    cands = [cand(GOLD, 0.75)] + [cand(k, 0.3) for k in ("drop-critical", "compound",
                                                         "redundant") * 2] + \
            [cand(ON_POLICY, s) for s in (0.4, 0.3, 0.2)]
    pairs = select_pairs(cands, margin=0.1, cap=4, synthetic_share=share)
    kinds = [rj.kind for _, rj in pairs]
    assert sum(k != ON_POLICY for k in kinds) == n_syn
    assert kinds.count(ON_POLICY) == n_on


def test_short_kind_is_filled_except_at_pure_shares():
    syn_only = [cand(GOLD, 0.75)] + [cand(k, 0.3) for k in ("drop-critical", "compound",
                                                            "redundant", "compound")]
    assert len(select_pairs(syn_only, margin=0.1, cap=4, synthetic_share=0.5)) == 4
    assert select_pairs(syn_only, margin=0.1, cap=4, synthetic_share=0.0) == []


def test_synthetic_kinds_take_turns_and_rotate():
    cands = [cand(GOLD, 0.75)] + [cand(k, 0.3) for k in ("drop-critical", "compound",
                                                         "redundant") * 2]
    first = [rj.kind for _, rj in select_pairs(cands, margin=0.1, cap=3, synthetic_share=1.0)]
    assert first == ["drop-critical", "compound", "redundant"]
    second = [rj.kind for _, rj in select_pairs(cands, margin=0.1, cap=3, synthetic_share=1.0,
                                                first_kind=1)]
    assert second == ["compound", "redundant", "drop-critical"]


def test_chosen_is_never_synthetic_and_gold_is_never_rejected():
    gold = cand(GOLD, 0.5)
    better_draft = cand(ON_POLICY, 0.7)
    lucky_negative = cand("compound", 0.8)      # a judge slip must not make damage "chosen"
    failing_draft = cand(ON_POLICY, 0.0, spec=["has 6 questions, expected exactly 7"])
    pairs = select_pairs([gold, better_draft, lucky_negative, failing_draft], margin=0.1, cap=4,
                         synthetic_share=0.5)
    assert {ch.kind for ch, _ in pairs} == {ON_POLICY} and pairs[0][0] is better_draft
    assert [rj for _, rj in pairs] == [failing_draft]
    # a tie between the gold and a draft goes to the gold
    tie = select_pairs([gold, cand(ON_POLICY, 0.5), cand("redundant", 0.3)], margin=0.1, cap=4,
                       synthetic_share=0.5)
    assert tie[0][0] is gold


# ---- the whole builder ----------------------------------------------------------------------
def drafts_file(path: Path, cases) -> Path:
    rows = []
    for c in cases:
        g = c.gold
        rows.append({"input": c.input, "candidate": DiscoveryResult(
            g.task_title, g.task_description, g.questions[:6]).to_dict()})          # gate fails
        rows.append({"input": c.input, "text": "```json\n" + render_assistant(DiscoveryResult(
            g.task_title, g.task_description,
            g.questions[:5] + (Question("Any other preferences?", "x"),
                               Question("Anything else?", "y")))) + "\n```"})   # weak, parses
        rows.append({"input": c.input, "text": "I cannot help with that."})     # unusable
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefs")
    drafts = drafts_file(tmp / "drafts.jsonl", reference_cases()[:12])
    opts = PrefsOptions(margin=0.2, max_pairs_per_task=3, synthetic_share=0.5, limit=12,
                        val_fraction=0.25, seed=3)
    rep = build_prefs([REFERENCES_DIR], tmp / "out", get_judge("offline"), options=opts,
                      drafts_files=[drafts], progress=False)
    return tmp / "out", rep, opts


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_builder_respects_margin_and_cap(built):
    out, rep, opts = built
    side = read(out / "pairs.sidecar.jsonl")
    assert rep.n_pairs == len(side) > 0
    per_task = {}
    for s in side:
        per_task[s["task_id"]] = per_task.get(s["task_id"], 0) + 1
        assert s["margin"] >= opts.margin - 1e-6
        assert s["margin"] == pytest.approx(s["chosen"]["score"] - s["rejected"]["score"],
                                            abs=1e-3)
        assert s["chosen"]["kind"] in (GOLD, ON_POLICY)
    assert max(per_task.values()) <= opts.max_pairs_per_task
    assert rep.unusable_samples == 12          # the refusal text, once per task
    assert set(rep.by_kind) == {"drop-critical", "compound", "redundant", "on-policy"}


def test_sidecar_explains_each_pair(built):
    out, _, _ = built
    for s in read(out / "pairs.sidecar.jsonl"):
        assert s["judge"].startswith("offline@") and s["provenance"]["chosen"]["gold"]
        if s["kind"] == ON_POLICY:
            assert s["provenance"]["rejected"]["draft"].endswith(tuple(f":{i}" for i in
                                                                       range(1, 37)))
        else:
            assert s["provenance"]["rejected"]["negative"] == s["kind"]
            assert s["rejected"]["note"]
        if s["rejected"]["spec_violations"]:
            assert s["deltas"] is None and s["rejected"]["score"] == 0.0
        else:
            assert set(s["deltas"]) == set(DIMS)
            assert s["deltas"]["atomicity"] == pytest.approx(
                s["chosen"]["rubric"]["atomicity"] - s["rejected"]["rubric"]["atomicity"],
                abs=1e-3)


def test_trl_and_apple_formats(built):
    out, _, _ = built
    pairs = read(out / "pairs.jsonl")
    side = {s["id"]: s for s in read(out / "pairs.sidecar.jsonl")}
    apple = {a["id"]: a for a in read(out / "apple_pairs.jsonl")}
    assert len(pairs) == len(side) == len(apple)
    for p in pairs:
        s = side[p["id"]]
        assert p["prompt"] == planner_messages(s["input"])
        for key in ("chosen", "rejected"):
            (msg,) = p[key]
            assert msg["role"] == "assistant"
            parsed = parse_assistant(msg["content"]).result
            assert [q.title for q in parsed.questions] == s[key]["questions"]
            assert apple[p["id"]][key] == p["prompt"] + [msg]
        assert p["chosen"] != p["rejected"]


def test_train_val_split_is_by_task(built):
    out, rep, _ = built
    pairs = read(out / "pairs.jsonl")
    train, val = read(out / "train.jsonl"), read(out / "val.jsonl")
    assert sorted(r["id"] for r in train + val) == sorted(r["id"] for r in pairs)
    task = lambda r: r["id"].split("#")[0]  # noqa: E731
    assert not {task(r) for r in train} & {task(r) for r in val}
    assert len(val) == rep.n_val > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_pairs"] == len(pairs) and manifest["options"]["margin"] == 0.2


def test_leak_guard_refuses_a_ruler_task(tmp_path, capsys):
    ruler = ruler_cases()[0]
    refs = read(sorted(REFERENCES_DIR.glob("*.jsonl"))[0])[:3]
    leaked = dict(refs[1], input=ruler.input.rstrip(".!") + "!", id="sneaky")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in [refs[0], leaked, refs[2]]))
    rc = main(["--gold", str(gold), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{gold}:2" in err and ruler.id in err
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def test_leak_guard_checks_drafts_too(tmp_path, capsys):
    ruler = ruler_cases()[1]
    drafts = tmp_path / "drafts.jsonl"
    drafts.write_text(json.dumps({"input": ruler.input, "text": "{}"}) + "\n")
    rc = main(["--limit", "2", "--drafts", str(drafts), "--out", str(tmp_path / "out")])
    assert rc != 0 and f"{drafts}:1" in capsys.readouterr().err


def test_bad_options_are_named(tmp_path, capsys):
    assert main(["--margin", "2", "--out", str(tmp_path)]) == 2
    assert "--margin" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:             # a range the flag's type checks: usage
        main(["--synthetic-share", "-0.1", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--synthetic-share" in capsys.readouterr().err


@pytest.mark.slow
def test_student_samples_are_logged_and_reused(tiny_sft_run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--limit", "2", "--student-adapter", str(tiny_sft_run), "--samples", "2",
            "--max-new-tokens", "24", "--out", str(out)]
    assert main(argv) == 0
    log = read(out / "samples.jsonl")
    assert len(log) == 4 and {r["sample_index"] for r in log} == {0, 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["student"]["student_adapter"] == str(tiny_sft_run)
    assert manifest["student"]["student_run_id"].startswith("sft-")
    # 24 tokens cannot hold a full answer: every sample is counted as unusable, none kept
    assert manifest["unusable_samples"] + manifest["duplicate_samples"] <= 4
    capsys.readouterr()
    assert main(argv) == 0                       # resumed: nothing sampled again
    assert len(read(out / "samples.jsonl")) == 4
    argv[argv.index("--samples") + 1] = "3"      # a different spec samples anew
    assert main(argv) == 0
    assert len(read(out / "samples.jsonl")) == 4 + 6


def test_anthropic_judge_shares_its_cache(tmp_path, monkeypatch):
    key = "sk-ant-test-prefs-0123456789SECRET"

    def responder(body):
        sets = judge_sets(body)
        same = sets["candidate"]["questions"] == sets["gold"]["questions"]
        score = 5 if same else 3
        return {"better": "tie" if same else "A", **{d: score for d in DIMS},
                "notes": "same" if same else "gold covers more"}

    with FakeAnthropic(api_key=key) as srv:
        srv.responders["record_verdict"] = responder
        monkeypatch.setenv("ANTHROPIC_API_KEY", key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        argv = ["--limit", "2", "--judge", "anthropic", "--judge-cache",
                str(tmp_path / "judge.sqlite"), "--out", str(tmp_path / "out")]
        assert main(argv) == 0
        first = len(srv.message_requests())
        assert first == 2 * 7                    # gold + 6 negatives per task
        assert main(argv) == 0
        assert len(srv.message_requests()) == first     # every verdict came from the cache
    side = read(tmp_path / "out" / "pairs.sidecar.jsonl")
    assert len(side) == 2 * 4
    assert all(s["judge"] == "anthropic:claude-sonnet-4-6" and s["margin"] == 0.5 for s in side)
    assert all(s["rejected"]["judge_notes"] == "gold covers more" for s in side)
    assert key not in (tmp_path / "out" / "manifest.json").read_text()


def test_old_command_name_still_builds_pairs(tmp_path):
    """`python -m data.prefs` (the documented name before the stage moved to prefs/) hands its
    arguments to `python -m prefs.build` and says so."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "pairs"
    proc = subprocess.run([sys.executable, "-m", "data.prefs", "--limit", "2", "--out", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "python -m prefs.build" in proc.stderr
    assert "preference pairs:" in proc.stdout
    assert read(out / "pairs.jsonl") and (out / "manifest.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "data.prefs", "--margin", "2"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--margin must lie in 0..1" in bad.stderr
