"""judge.learned / judge.learn: the learned offline judge learns a planted signal, is
deterministic, refuses malformed training records with file:line, and names itself by weights
and training data. Lexical similarity keeps these tests free of the embedding model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from data.contract import DiscoveryResult, Question
from judge.judges import JudgeItem
from judge.judges.offline_features import LexicalSimilarity
from judge.records import JudgedRecord, read_records, write_records
from judge.verdict import GOLD_BETTER, TIE, Verdict
from judge.evaluate import agreement, leave_one_experiment_out
from judge.learn import main as learn_main
from judge.learned import LearnedJudge, LearnedJudgeError, load, save, train

# Synthetic tasks: each gold asks four on-topic questions; a candidate keeps k of them and fills
# the rest from an unrelated pool. The planted truth: every rubric score is 1 + k, and only a
# candidate that keeps all four ties with the gold.
TASKS = {
    "Plan a camping weekend": ["Which campsite or region are you considering?",
                               "How many nights will you camp?",
                               "Do you already own a tent and sleeping bags?",
                               "Will you cook over a fire or a camping stove?"],
    "Adopt a cat": ["Would you prefer a kitten or an adult cat?",
                    "Does anyone in your home have a cat allergy?",
                    "Will the cat live indoors or go outside?",
                    "Which shelters near you have you looked at?"],
    "Learn to bake sourdough": ["Do you already have an active sourdough starter?",
                                "Which flour brands can you buy locally?",
                                "How warm does your kitchen get during the day?",
                                "Do you own a Dutch oven for baking?"],
    "Repaint the living room": ["What colour palette do you have in mind?",
                                "How large is the living room in square metres?",
                                "Are there cracks in the walls that need filling first?",
                                "Will you paint the ceiling as well?"],
}
FILLER = ["What is your favourite movie genre?", "How often do you check your email?",
          "Which smartphone brand do you use?", "What was the last concert you attended?"]


def result(title: str, asks: list[str]) -> DiscoveryResult:
    return DiscoveryResult(title, f"Help with: {title.lower()}.",
                           tuple(Question(a, "", False) for a in asks))


def record(task: str, k: int, experiment: str) -> JudgedRecord:
    gold = TASKS[task]
    cand = gold[:k] + FILLER[:4 - k]
    verdict = Verdict(TIE if k == 4 else GOLD_BETTER, {d: 1.0 + k for d in (
        "atomicity", "specificity", "coverage", "naturalness", "nonRedundancy")})
    return JudgedRecord(task, result(task, gold), result(task, cand), True, verdict=verdict,
                        experiment=experiment, case_id=f"{task}-{k}")


def synthetic(n_experiments: int = 3) -> list[JudgedRecord]:
    return [record(t, k, f"exp{e}") for e in range(n_experiments) for t in TASKS
            for k in range(5)]


@pytest.fixture(scope="module")
def sim():
    return LexicalSimilarity()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, sim):
    folder = tmp_path_factory.mktemp("learned")
    model, manifest = train(synthetic(), sim, alpha=1.0, c=1.0)
    name = save(model, manifest, folder, sim.identity)
    return folder, name


def test_learns_the_planted_signal(fitted, sim):
    folder, _ = fitted
    judge = LearnedJudge(folder, sim=sim)
    held = [record(t, k, "new") for t in TASKS for k in (0, 2, 4)]
    out = judge.judge_many([JudgeItem(r.input, r.gold, r.candidate) for r in held])
    pred = [np.mean(list(v.rubric.values())) for v in out]
    truth = [1.0 + int(r.case_id[-1]) for r in held]
    assert spearmanr(pred, truth).statistic > 0.9
    assert np.mean(np.abs(np.array(pred) - truth)) < 0.6
    assert [v.pairwise for v in out] == [r.verdict.pairwise for r in held]


def test_two_loads_give_identical_scores_and_name(fitted, sim):
    folder, name = fitted
    items = [JudgeItem(r.input, r.gold, r.candidate) for r in synthetic(1)]
    a = LearnedJudge(folder, sim=sim).judge_many(items)
    b = LearnedJudge(folder, sim=LexicalSimilarity()).judge_many(items)
    assert [v.to_dict() for v in a] == [v.to_dict() for v in b]
    assert LearnedJudge(folder, sim=sim).name == name and name.startswith("learned@")
    assert len(name) == len("learned@") + 12


def test_identity_covers_weights_and_training_data(tmp_path, sim):
    recs = synthetic()
    m1, man1 = train(recs, sim, alpha=1.0, c=1.0)
    m2, man2 = train(recs, sim, alpha=1.0, c=1.0)
    assert save(m1, man1, tmp_path / "a", sim.identity) == save(m2, man2, tmp_path / "b",
                                                                  sim.identity)
    assert ((tmp_path / "a" / "weights.safetensors").read_bytes()
            == (tmp_path / "b" / "weights.safetensors").read_bytes())
    m3, man3 = train(recs[:-1], sim, alpha=1.0, c=1.0)
    assert save(m3, man3, tmp_path / "c", sim.identity) != save(m1, man1, tmp_path / "d",
                                                                  sim.identity)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert len(manifest) == len(recs) and set(manifest[0]) >= {"case_id", "candidate_sha256"}


def test_edited_weights_or_other_similarity_are_refused(fitted, tmp_path, sim):
    import shutil
    folder, _ = fitted
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    raw = bytearray((copy / "weights.safetensors").read_bytes())
    raw[-1] ^= 1
    (copy / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(LearnedJudgeError, match="weights_sha256"):
        load(copy)

    class Other(LexicalSimilarity):
        identity = "something-else"
    with pytest.raises(LearnedJudgeError, match="fitted with similarity"):
        LearnedJudge(folder, sim=Other())


def test_cli_trains_and_refuses_malformed_records_with_file_line(tmp_path, capsys):
    path = tmp_path / "records.jsonl"
    write_records(path, synthetic(2))
    out = tmp_path / "judge"
    assert learn_main(["--records", str(path), "--out", str(out), "--backend", "lexical",
                       "--groups", "embed,text"]) == 0
    assert "learned@" in capsys.readouterr().out and (out / "config.json").is_file()

    lines = path.read_text().splitlines()
    bad = json.loads(lines[3])
    bad["verdict"]["rubric"]["coverage"] = 7
    lines[3] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    assert learn_main(["--records", str(path), "--out", str(tmp_path / "x"),
                       "--backend", "lexical"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4" in err and "verdict.rubric.coverage" in err and "Traceback" not in err
    assert learn_main(["--records", str(path), "--out", str(tmp_path / "x"),
                       "--groups", "vibes"]) == 2


def test_leave_one_experiment_out_never_sees_the_held_out_experiment(sim):
    from judge.learned import features_matrix
    recs = synthetic(3)
    idx = list(range(len(recs)))
    x, names = features_matrix(((r.input, r.gold, r.candidate) for r in recs), sim)
    pred = leave_one_experiment_out(recs, idx, x, names, ("embed", "text", "offline"), 1.0, 1.0)
    assert sorted(pred) == idx
    a = agreement("learned", recs, pred, full=len(TASKS) * 5)
    assert a.case_spearman > 0.9 and a.n_experiments == 3
    # Poison one experiment's labels: the other experiments' predictions must not move.
    poisoned = synthetic(3)
    for r in poisoned[:20]:
        r.verdict = Verdict(GOLD_BETTER, {d: 1.0 for d in r.verdict.rubric})
    pred2 = leave_one_experiment_out(poisoned, idx, x, names, ("embed", "text", "offline"),
                                     1.0, 1.0)
    assert all(pred2[i].rubric == pred[i].rubric for i in range(20))


def test_judge_name_accepts_learned_with_a_fitted_folder_only(fitted, tmp_path, sim):
    import argparse
    from types import SimpleNamespace
    from judge.cli import build_judge
    from judge.judges import JUDGE_NAMES, get_judge, judge_name
    folder, name = fitted
    assert "learned" in JUDGE_NAMES
    assert judge_name(f"learned:{folder}") == f"learned:{folder}"
    assert judge_name("offline") == "offline"
    for bad in ("sonnet", f"learned:{tmp_path / 'none'}"):
        with pytest.raises(argparse.ArgumentTypeError):
            judge_name(bad)
    # plain `learned` is the shipped judge (fitted on the published development verdicts)
    assert judge_name("learned") == "learned" and judge_name("learned:") == "learned:"
    assert get_judge(f"learned:{folder}", sim=sim).name == name
    with pytest.raises(ValueError, match="do not apply to the learned judge"):
        get_judge(f"learned:{folder}", sim=sim, model="claude")
    args = SimpleNamespace(judge=f"learned:{tmp_path / 'none'}", swap=False, samples=1,
                           weights=None, offline_backend=None, embedding_model=None)
    with pytest.raises(ValueError, match="no such folder"):
        build_judge(args)
    args.swap = True
    with pytest.raises(ValueError, match="do not apply to the learned judge"):
        build_judge(args)


class _Parsed(Exception):
    """Raised by a stand-in for the work after parsing: the command line was accepted."""


@pytest.mark.parametrize("command", ["eval.run", "prefs.build", "eval.judge"])
def test_judge_option_takes_learned_dir_and_refuses_an_unfitted_folder(command, fitted, tmp_path,
                                                                       monkeypatch, capsys):
    """--judge learned:DIR is accepted where a judge is chosen by name; a folder that holds no
    fitted judge is a usage error (exit 2) naming the folder and how to fit one."""
    import importlib
    folder, _ = fitted
    mod = importlib.import_module(command)
    seen = {}

    def stop(*args, **kwargs):
        seen["judge"] = kwargs.get("judge", getattr(args[0], "judge", None) if args else None)
        raise _Parsed

    argv = {"eval.run": ["--base", "standin", "--label", "t", "--note", "n"],
            "prefs.build": ["--out", str(tmp_path / "prefs")],
            "eval.judge": ["--candidates", str(tmp_path / "c.jsonl")]}[command]
    target = {"eval.run": "run_eval", "prefs.build": "build_judge_from_args",
              "eval.judge": "load_ruler"}[command]
    monkeypatch.setattr(mod, target, stop)
    with pytest.raises(_Parsed):
        mod.main(argv + ["--judge", f"learned:{folder}"])
    if command != "eval.judge":
        assert seen["judge"] == f"learned:{folder}"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        mod.main(argv + ["--judge", f"learned:{empty}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --judge" in err and str(empty) in err and "not a fitted learned judge" in err
    assert "python -m judge.learn" in err and "Traceback" not in err


def test_shipped_judge_is_complete_and_names_its_training_data():
    """judge/shipped/learned-dev: weights whose sha256 the config states, the training-data
    hash in its name, and a manifest of (experiment, case, candidate sha256) per training record
    so any measurement set can be checked for overlap; no text of the source data."""
    import hashlib
    from judge.judges import SHIPPED_LEARNED
    from judge.learned import check_folder
    cfg = check_folder(SHIPPED_LEARNED)
    assert cfg["n_train"] >= 1800
    manifest = json.loads((SHIPPED_LEARNED / "manifest.json").read_text())
    assert len(manifest) == cfg["n_train"]
    assert all(set(m) >= {"case_id", "candidate_sha256"} for m in manifest)
    w = hashlib.sha256((SHIPPED_LEARNED / "weights.safetensors").read_bytes()).hexdigest()
    assert w == cfg["weights_sha256"]
    # identifiers and hashes only: no value carries text of the source data
    values = [v for m in manifest for v in m.values()] + cfg["feature_names"]
    assert all(isinstance(v, str) and " " not in v and len(v) <= 64 for v in values)

