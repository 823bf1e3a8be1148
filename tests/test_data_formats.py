"""data.formats: Apple-toolkit, HF messages and datasets folders become the same prompt/completion
rows as data.sft writes; malformed rows name file and line; leaks and prompt changes are found."""
import json

import pytest

from data.contract import planner_messages
from data.formats import FormatError, load_rows, prompt_mismatches
from train.config import ConfigError, load_config
from train.sft import SFTRunConfig, build_trainer, sft_data_record
from conftest import tiny_sft_config


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _strip(rows):
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


@pytest.fixture(scope="module")
def reference(sft_data_dir):
    rows, fmt = load_rows(sft_data_dir / "train.jsonl")
    assert fmt == "prompt_completion"
    return rows[:6]


def test_apple_messages_and_datasets_folder_give_the_same_rows(reference, sft_data_dir, tmp_path):
    apple, fmt = load_rows(sft_data_dir / "apple_train.jsonl")
    assert fmt == "apple" and _strip(apple[:6]) == _strip(reference)
    msgs = _write(tmp_path / "chat.jsonl",
                  [{"messages": r["prompt"] + r["completion"]} for r in reference])
    got, fmt = load_rows(msgs, "messages")
    assert fmt == "messages" and _strip(got) == _strip(reference)
    from datasets import Dataset
    Dataset.from_list([{"messages": r["prompt"] + r["completion"]} for r in reference]) \
        .save_to_disk(str(tmp_path / "ds"))
    got, fmt = load_rows(tmp_path / "ds")
    assert _strip(got) == _strip(reference) and got[2]["where"].endswith("ds#row2")


def test_malformed_rows_name_file_and_line(reference, tmp_path):
    good = reference[0]["prompt"] + reference[0]["completion"]
    cases = {
        "not json": ("{oops", "invalid JSON"),
        "bad role": ([good[0], {"role": "tool", "content": "x"}, good[2]], "message 1 must be"),
        "no answer": (good[:2], "expected messages system, user, assistant"),
        "not a string": ([good[0], {"role": "user", "content": 3}, good[2]], "message 1 must be"),
    }
    for name, (bad, why) in cases.items():
        p = tmp_path / "apple.jsonl"
        p.write_text(json.dumps(good) + "\n\n" + (bad if isinstance(bad, str) else json.dumps(bad))
                     + "\n")
        with pytest.raises(FormatError, match=f"{p}:3: {why}"):
            load_rows(p, "apple")
    with pytest.raises(FormatError, match=r"chat.jsonl:1: data_format messages expects"):
        load_rows(_write(tmp_path / "chat.jsonl", [good]), "messages")
    with pytest.raises(FormatError, match=r"odd.jsonl:1: cannot tell the data format"):
        load_rows(_write(tmp_path / "odd.jsonl", [{"text": "hi"}]))


def test_leak_guard_and_prompt_check_see_converted_rows(tmp_path):
    from data.corpus import ruler_cases
    leak = ruler_cases()[0].input
    other = planner_messages("Paint the garden fence")
    other[0] = {"role": "system", "content": "You are helpful."}
    answer = [{"role": "assistant", "content": "{}"}]
    path = _write(tmp_path / "apple.jsonl", [planner_messages(leak) + answer, other + answer])
    rows, _ = load_rows(path)
    data = sft_data_record(str(path), None, rows, 0)
    assert len(data["ruler_leaks"]) == 1 and data["ruler_leaks"][0].startswith(f"{path}:1:")
    assert prompt_mismatches(rows) == data["prompt_mismatches"]
    assert len(data["prompt_mismatches"]) == 1 and data["prompt_mismatches"][0].startswith(
        f"{path}:2:")


def test_sft_takes_apple_data_and_reports_bad_rows_as_config_errors(standin_dir, sft_data_dir,
                                                                    tmp_path):
    cfg = tiny_sft_config(standin_dir, sft_data_dir, tmp_path / "run", max_steps=1,
                          train_file=str(sft_data_dir / "apple_train.jsonl"),
                          val_file=str(sft_data_dir / "apple_val.jsonl"), data_format="apple")
    trainer = build_trainer(cfg)[0]
    assert len(trainer.train_dataset) > 100
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[]\n")
    with pytest.raises(ConfigError, match=f"{bad}:1: expected a non-empty list"):
        build_trainer(tiny_sft_config(standin_dir, sft_data_dir, tmp_path / "r2",
                                      train_file=str(bad), val_file=None, data_format="apple"))
    with pytest.raises(ConfigError, match="key 'data_format' must be one of"):
        load_config(SFTRunConfig, None, {"data_format": "csv"})
