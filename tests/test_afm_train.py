"""A tiny AFM-geometry model trains with TRL's SFT and ORPO trainers on CPU, and through train.sft."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from train.afm import LORA_TARGET_MODULES, load_afm
from train.afm.testing import single_thread, write_synthetic_assets

REGULAR_MODULES, REUSE_MODULES = 7, 5


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_synthetic_assets(tmp_path_factory.mktemp("toolkit") / "assets")


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM")


def tasks(n: int) -> list[str]:
    return [f"write a haiku about the ocean {i}" for i in range(n)]


def common_args(tmp_path) -> dict:
    return dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, learning_rate=5e-3,
                use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no", max_length=160,
                gradient_checkpointing=True, dataloader_num_workers=0, disable_tqdm=True)


def trained_lora_b(peft_model) -> dict[str, int]:
    counts = {"regular": 0, "reuse": 0}
    n_regular = peft_model.get_base_model().config.num_regular_layers
    for name, param in peft_model.named_parameters():
        if "lora_B" in name and param.abs().sum() > 0:
            counts["regular" if int(name.split(".layers.")[1].split(".")[0]) < n_regular else "reuse"] += 1
    return counts


@pytest.mark.slow
def test_trl_sft_trains_apples_lora_set(assets, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, _ = load_afm(assets)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [{"messages": [{"role": "system", "content": "Plan the task."}, {"role": "user", "content": task},
                          {"role": "assistant", "content": "title: ocean\nquestion one?\nquestion two?"}]}
            for task in tasks(8)]
    trainer = SFTTrainer(model=model, args=SFTConfig(assistant_only_loss=True, **common_args(tmp_path)),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora_config())
    example = trainer.train_dataset[0]
    trained_text = tokenizer.decode([t for t, lab in zip(example["input_ids"], example["labels"]) if lab != -100])
    assert trained_text == "title: ocean\nquestion one?\nquestion two?<turn_end>"
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    config = model.config
    assert trained_lora_b(trainer.model) == {"regular": REGULAR_MODULES * config.num_regular_layers,
                                             "reuse": REUSE_MODULES * config.num_kv_reuse_layers}
    base = trainer.model.get_base_model()
    assert torch.equal(base.model.layers[0].self_attn.k_proj.base_layer.weight,
                       frozen["model.layers.0.self_attn.k_proj.weight"])


@pytest.mark.slow
def test_trl_orpo_trains(assets, tmp_path):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer, _ = load_afm(assets)
    rows = [{"prompt": [{"role": "user", "content": task}],
             "chosen": [{"role": "assistant", "content": "title: ocean\nquestion?"}],
             "rejected": [{"role": "assistant", "content": "ugly"}]} for task in tasks(8)]
    trainer = ORPOTrainer(model=model, args=ORPOConfig(**common_args(tmp_path)), train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora_config())
    example = trainer.train_dataset[0]
    turn_end = tokenizer.eos_token_id
    assert example["chosen_input_ids"].count(tokenizer.bos_token_id) == 1
    # default system turn, user turn, assistant turn: one <turn_end> each, none added twice
    assert example["chosen_input_ids"][-1] == turn_end and example["chosen_input_ids"].count(turn_end) == 3
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert trained_lora_b(trainer.model)["reuse"] > 0


@pytest.mark.slow
def test_project_sft_on_toolkit_assets(assets, tmp_path):
    sft = pytest.importorskip("train.sft")
    train_file = tmp_path / "train.jsonl"
    with open(train_file, "w", encoding="utf-8") as fh:
        for task in tasks(6):
            fh.write(json.dumps({"prompt": [{"role": "system", "content": "Plan the task."},
                                            {"role": "user", "content": f"Task: {task}"}],
                                 "completion": [{"role": "assistant", "content": "title: ocean\nquestion?"}]}) + "\n")
    cfg = sft.SFTRunConfig(model_name_or_path=str(assets), train_file=str(train_file), val_file=None,
                           output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                           max_length=160, device="cpu", precision="fp32", gradient_checkpointing=True,
                           save_strategy="no", progress=False, lora_r=8)
    out = sft.run_sft(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["base_model"]["architecture"] == "AFMTextV7ForCausalLM"
    assert run["base_model"]["rope_layout"] == "interleaved" and run["base_model"]["stand_in"] is False
    assert run["base_model"]["base_signature"] == "9799725ff8e851184037110b422d891ad3b92ec1"
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    n_regular = 3  # tiny_config: 5 layers, the last 2 reuse layer 2's keys/values
    assert f"base_model.model.model.layers.{n_regular - 1}.self_attn.k_proj.lora_B.weight" in keys
    assert not any(f"layers.{n_regular}.self_attn.k_proj" in k for k in keys)
    assert f"base_model.model.model.layers.{n_regular}.self_attn.q_proj.lora_B.weight" in keys


def test_afm_sft_config_fits_the_sft_schema():
    sft = pytest.importorskip("train.sft")
    from train.config import load_config

    cfg = load_config(sft.SFTRunConfig, Path(__file__).resolve().parents[1] / "configs" / "afm-sft.yaml")
    assert (cfg.lora_r, cfg.lora_alpha) == (32, 16)
    assert cfg.lora_target_modules == LORA_TARGET_MODULES
    assert cfg.gradient_checkpointing and cfg.precision == "auto"


def test_afm_orpo_config_fits_the_orpo_schema():
    from train.config import load_config
    from train.orpo import ORPORunConfig

    cfg = load_config(ORPORunConfig, Path(__file__).resolve().parents[1] / "configs" / "afm-orpo.yaml")
    assert (cfg.lora_r, cfg.lora_alpha) == (32, 16) and cfg.lora_target_modules == LORA_TARGET_MODULES
    assert cfg.train_file == "runs/data/prefs/train.jsonl" and cfg.gradient_checkpointing


@pytest.mark.slow
def test_project_orpo_on_toolkit_assets(assets, tmp_path):
    from train.orpo import ORPORunConfig, run_orpo

    train_file = tmp_path / "pairs.jsonl"
    with open(train_file, "w", encoding="utf-8") as fh:
        for task in tasks(6):
            prompt = [{"role": "system", "content": "Plan the task."},
                      {"role": "user", "content": f"Task: {task}"}]
            fh.write(json.dumps({"prompt": prompt,
                                 "chosen": [{"role": "assistant", "content": "title: ocean\nwhen?"}],
                                 "rejected": [{"role": "assistant", "content": "ok"}]}) + "\n")
    cfg = ORPORunConfig(model_name_or_path=str(assets), train_file=str(train_file), val_file=None,
                        output_dir=str(tmp_path / "orpo"), max_steps=2, per_device_train_batch_size=2,
                        gradient_accumulation_steps=1, max_length=160, device="cpu",
                        precision="fp32", save_strategy="no", progress=False, lora_r=8,
                        measure_margins=False)
    out = run_orpo(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "orpo" and run["base_model"]["architecture"] == "AFMTextV7ForCausalLM"
    assert run["base_model"]["rope_layout"] == "interleaved"
    losses = run["metrics"]["train_loss"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
