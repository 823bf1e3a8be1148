"""LoRA SFT on the tiny stand-in: masking, learning, resume, reload, config errors."""
import json
import shutil

import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_sft_config
from data.corpus import ruler_cases
from eval.generate import generate_answers, render_prompt
from train.config import ConfigError, load_config
from train.models import load_with_adapter
from train.sft import SFTRunConfig, build_trainer, main as sft_main, run_sft


@pytest.fixture(scope="module")
def small_data(sft_data_dir, tmp_path_factory):
    """24 training and 4 validation examples: enough for a few real optimizer steps."""
    d = tmp_path_factory.mktemp("small-sft")
    for name, n in (("train.jsonl", 24), ("val.jsonl", 4)):
        lines = (sft_data_dir / name).read_text().splitlines()[:n]
        (d / name).write_text("\n".join(lines) + "\n")
    return d


def test_mistyped_config_key_names_the_key_and_the_choices(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: standin\nlearnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTRunConfig, bad)
    msg = str(e.value)
    assert str(bad) in msg and "'learnig_rate'" in msg and "Did you mean 'learning_rate'" in msg
    assert "lora_alpha" in msg  # the valid choices are listed
    assert sft_main(["--config", "configs/tiny-sft.yaml", "--lora_rnak", "8"]) == 2
    assert "unknown config key 'lora_rnak'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="key 'lora_r' expects an integer"):
        load_config(SFTRunConfig, None, {"lora_r": "eight"})


def test_defaults_match_apples_adapters():
    cfg = SFTRunConfig()
    assert (cfg.lora_r, cfg.lora_alpha) == (32, 16)
    assert cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj"]


def test_loss_covers_exactly_the_assistant_answer(standin_dir, small_data, tmp_path):
    cfg = tiny_sft_config(standin_dir, small_data, tmp_path / "run", max_steps=1)
    trainer, tokenizer, *_ = build_trainer(cfg)
    rows = [json.loads(l) for l in open(small_data / "train.jsonl")]
    by_prompt = {render_prompt(tokenizer, r["prompt"][1]["content"].removeprefix("Task: ")):
                 r["completion"][0]["content"] for r in rows}
    checked = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            ids, labels = ids.tolist(), labels.tolist()
            first = next(i for i, lab in enumerate(labels) if lab != -100)
            real = [i for i, t in enumerate(ids) if t != tokenizer.pad_token_id]
            prompt_text = tokenizer.decode(ids[real[0]:first])
            assert prompt_text in by_prompt, "every token before the answer is masked"
            learned = [t for t, lab in zip(ids, labels) if lab != -100]
            assert all(lab == t for t, lab in zip(ids, labels) if lab != -100)
            # Exactly the answer and one end marker: no prompt token, no doubled EOS.
            assert tokenizer.decode(learned) == by_prompt[prompt_text] + tokenizer.eos_token
            assert learned.count(tokenizer.eos_token_id) == 1
            checked += 1
    assert checked == 24


def test_sft_lowers_validation_loss_and_records_the_run(tiny_sft_run):
    run = json.loads((tiny_sft_run / "run.json").read_text())
    m = run["metrics"]
    # Training loss falls. Validation loss is recorded but not a signal on the stand-in: its
    # pre-training has seen every pool reference's questions (train.standin), so the held-out
    # split starts low; what SFT changes is behaviour, asserted in test_eval_run.
    assert m["train_loss"][-1] < m["train_loss"][0] - 0.05
    assert all(torch.isfinite(torch.tensor(m["train_loss"])))
    assert 0 < m["initial_eval_loss"] < 10 and 0 < m["final_eval_loss"] < 10
    assert run["stage"] == "sft" and run["lora"]["r"] == 32
    assert run["base_model"]["stand_in"] is True and run["base_model"]["rope_layout"] == "half-split"
    assert len(run["data"]["inputs"]) == run["data"]["n_train"] and run["data"]["ruler_leaks"] == []
    assert run["prompt_hash"] and run["data"]["train_sha256"] and run["versions"]["trl"]
    assert (tiny_sft_run / "adapter_model.safetensors").exists()
    assert (tiny_sft_run / "loss_curve.png").stat().st_size > 1000


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated interruption")


class _Capture(TrainerCallback):
    model = None
    first_logged_step = None

    def on_train_end(self, args, state, control, model=None, **kw):
        _Capture.model = model

    def on_log(self, args, state, control, logs=None, **kw):
        if _Capture.first_logged_step is None and "loss" in (logs or {}):
            _Capture.first_logged_step = state.global_step


def _adapter_tensors(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "adapter_model.safetensors"))


def test_interrupted_run_resumes_from_its_checkpoint(standin_dir, small_data, tmp_path):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1,
                  save_total_limit=3, per_device_train_batch_size=4, val_file=None)
    straight = run_sft(tiny_sft_config(standin_dir, small_data, tmp_path / "a", **common))
    out_b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run_sft(tiny_sft_config(standin_dir, small_data, out_b, **common), callbacks=[_StopAt(4)])
    assert (out_b / "checkpoints" / "checkpoint-3" / "optimizer.pt").exists()
    assert not (out_b / "run.json").exists()
    _Capture.first_logged_step = None
    run_sft(tiny_sft_config(standin_dir, small_data, out_b, resume_from_checkpoint="latest",
                            **common), callbacks=[_Capture()])
    run_b = json.loads((out_b / "run.json").read_text())
    assert run_b["resumed_from"].endswith("checkpoint-3")
    assert _Capture.first_logged_step == 4 and run_b["metrics"]["global_step"] == 6
    # Same data order, same optimizer and scheduler state: the same weights as never stopping.
    a, b = _adapter_tensors(straight), _adapter_tensors(out_b)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # A fresh run from checkpoint-3 without its optimizer state would not match.
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)


def test_saved_adapter_reloads_with_identical_greedy_output(standin_dir, small_data, tmp_path):
    _Capture.model = None
    out = run_sft(tiny_sft_config(standin_dir, small_data, tmp_path / "r", max_steps=4,
                                  val_file=None), callbacks=[_Capture()])
    inputs = [c.input for c in ruler_cases()[:3]]
    trained = _Capture.model.eval()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(standin_dir)
    before = generate_answers(trained, tok, inputs, max_new_tokens=120)
    reloaded, tok2, _ = load_with_adapter(str(standin_dir), out)
    after = generate_answers(reloaded, tok2, inputs, max_new_tokens=120)
    assert [g.text for g in before] == [g.text for g in after]
    base, _, _ = load_with_adapter(str(standin_dir), None)
    plain = generate_answers(base, tok2, inputs, max_new_tokens=120)
    assert [g.text for g in plain] != [g.text for g in after]  # the adapter is really applied


def test_a_run_shows_one_bar_with_the_loss_and_no_raw_log_lines(standin_dir, small_data,
                                                                tmp_path, capfd):
    """What a newcomer reads while a stage runs: one bar for the stage (steps, ETA, the latest
    loss as its postfix), no bar per datasets.map, no raw dict lines, no FutureWarning from our
    own calls; the full log still lands in run.json."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_sft(tiny_sft_config(standin_dir, small_data, tmp_path / "run", max_steps=3,
                                      logging_steps=1, progress=True, save_strategy="no"))
    err = capfd.readouterr().err
    assert "SFT" in err and "loss=" in err and "3/3" in err
    for noise in ("{'loss'", "Tokenizing", "Truncating", "Building labels", "examples/s"):
        assert noise not in err, noise
    ours = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert not ours, [str(w.message) for w in ours]
    assert len(json.loads((out / "run.json").read_text())["metrics"]["train_loss"]) == 3
