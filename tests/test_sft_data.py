import json
import shutil

import pytest

from data.contract import parse_assistant, planner_messages
from data.corpus import REFERENCES_DIR, ruler_cases
from data.leak import near_duplicate
from data.sft import build_sft_data, main as sft_main


def _gold_dir(tmp_path, extra_lines=()):
    d = tmp_path / "gold"
    shutil.copytree(REFERENCES_DIR, d)
    if extra_lines:
        with open(d / "zz-extra.jsonl", "w") as fh:
            for obj in extra_lines:
                fh.write(json.dumps(obj) + "\n")
    return d


def test_writes_trl_and_apple_formats_with_a_seeded_split(tmp_path):
    rep = build_sft_data([REFERENCES_DIR], tmp_path / "a", val_fraction=0.1, seed=3)
    rep2 = build_sft_data([REFERENCES_DIR], tmp_path / "b", val_fraction=0.1, seed=3)
    rep3 = build_sft_data([REFERENCES_DIR], tmp_path / "c", val_fraction=0.1, seed=4)
    assert rep.hashes == rep2.hashes and rep.hashes["train"] != rep3.hashes["train"]
    train = [json.loads(l) for l in open(tmp_path / "a" / "train.jsonl")]
    apple = [json.loads(l) for l in open(tmp_path / "a" / "apple_train.jsonl")]
    assert len(train) == len(apple) == rep.n_train and rep.n_val == round(0.1 * rep.n_in)
    row = train[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][1]["role"] == "user"
    assert parse_assistant(row["completion"][0]["content"], strict=True).ok
    assert [m["role"] for m in apple[0]] == ["system", "user", "assistant"]
    assert apple[0][:2] == train[0]["prompt"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["n_train"] == rep.n_train and manifest["sha256"] == rep.hashes


def test_duplicates_are_removed(tmp_path):
    first = json.loads(open(REFERENCES_DIR / "travel.jsonl").readline())
    dup = dict(first, id="dup-1", input=first["input"].upper() + "!!")
    rep = build_sft_data([_gold_dir(tmp_path, [dup])], tmp_path / "out")
    assert len(rep.duplicates) == 1 and "dup-1" not in (tmp_path / "out" / "train.jsonl").read_text()


@pytest.mark.parametrize("rewrite", [lambda s: s, lambda s: "  please help me " + s.lower() + "!"])
def test_leak_guard_refuses_a_ruler_task_and_its_near_duplicate(tmp_path, capsys, rewrite):
    case = ruler_cases()[7]
    leaked = {"id": "leak-1", "input": rewrite(case.input), "gold": case.gold.to_dict()}
    assert near_duplicate(leaked["input"], case.input)
    gold = _gold_dir(tmp_path, [leaked])
    out = tmp_path / "out"
    assert sft_main(["--gold", str(gold), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "zz-extra.jsonl:1" in err and case.id in err
    assert not (out / "train.jsonl").exists()


def test_bad_gold_record_is_a_clear_error(tmp_path, capsys):
    bad = {"id": "bad", "input": "Plan a bake sale", "gold": {"taskTitle": "Bake Sale"}}
    assert sft_main(["--gold", str(_gold_dir(tmp_path, [bad])), "--out", str(tmp_path / "o")]) == 2
    assert "zz-extra.jsonl:1: gold: missing key 'taskDescription'" in capsys.readouterr().err


def test_prompt_matches_the_contract(tmp_path):
    build_sft_data([REFERENCES_DIR], tmp_path)
    row = json.loads(open(tmp_path / "train.jsonl").readline())
    task = row["prompt"][1]["content"].removeprefix("Task: ")
    assert row["prompt"] == planner_messages(task)
