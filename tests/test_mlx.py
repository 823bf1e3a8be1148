"""The MLX backend against the torch one: same logits, same tokens, same losses and LoRA gradients,
K/V LoRA that learns on AFM, one run folder and one export path for both.

MLX runs on the CPU here (mlx-cpu, whose reference BLAS is ~10x slower than torch's), so the
sequences are short; on Apple silicon the same code runs on Metal.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import torch  # noqa: E402

from train.afm.testing import single_thread, write_synthetic_assets  # noqa: E402
from train.common import APPLE_LORA_TARGETS  # noqa: E402

try:
    from tests.greedy_ties import assert_same_greedy_texts  # noqa: E402
except ImportError:
    from greedy_ties import assert_same_greedy_texts  # noqa: E402

mx.set_default_device(mx.cpu)
ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_synthetic_assets(tmp_path_factory.mktemp("toolkit") / "assets")


def short_rows(n: int = 3) -> list[dict]:
    """Prompt/completion rows short enough for mlx-cpu (a system turn, a task, an answer)."""
    answers = ["Title: Paris\nQuestions: when? budget?", "Title: Garden\nQuestions: size? sun?",
               "Title: Move\nQuestions: where? when?", "Title: Party\nQuestions: guests? date?"]
    return [{"prompt": [{"role": "system", "content": "Plan the task."},
                        {"role": "user", "content": f"Task: plan item {i}"}],
             "completion": [{"role": "assistant", "content": answers[i % len(answers)]}]}
            for i in range(n)]


def short_pairs(n: int = 2) -> list[dict]:
    rows = short_rows(n + 1)
    return [{"prompt": rows[i]["prompt"], "chosen": rows[i]["completion"],
             "rejected": rows[i + 1]["completion"]} for i in range(n)]


def peft_with_random_lora(model, r: int = 4, alpha: int = 8, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=list(APPLE_LORA_TARGETS),
                                            task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:   # B starts at zero: give every LoRA an effect (and A a gradient)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft


def mlx_twin(base_path, peft, tmp_path, **kw):
    """The MLX model with the PEFT model's LoRA, through the PEFT folder on disk."""
    from train.mlx.lora import load_peft_adapter
    from train.mlx.models import load_mlx_base
    peft.save_pretrained(str(tmp_path / "peft"))
    base = load_mlx_base(str(base_path), **kw)
    loras, _ = load_peft_adapter(base, tmp_path / "peft")
    base.model.eval()
    return base, loras


def torch_lora_grads(peft) -> dict[str, np.ndarray]:
    return {n.replace(".default", ""): p.grad.numpy() for n, p in peft.named_parameters()
            if "lora_" in n and p.grad is not None}


def mlx_lora_grads(loras, grads_tree) -> dict[str, np.ndarray]:
    """PEFT-named gradients (A: r x in, B: out x r) from an MLX gradient tree."""
    from mlx.utils import tree_flatten

    from train.mlx.lora import lora_pairs
    flat = dict(tree_flatten(grads_tree))
    by_module = {}
    for path, value in flat.items():
        module_path, attr = path.rsplit(".", 1)
        by_module.setdefault(module_path, {})[attr] = np.array(value)
    out = {}
    paths = {id(m): p for p, m in MODEL_PATHS.items()}
    for name, (module, part) in loras.items():
        a_attr, b_attr = lora_pairs(module)[part]
        got = by_module[paths[id(module)]]
        out[f"base_model.model.{name}.lora_A.weight"] = got[a_attr].T
        out[f"base_model.model.{name}.lora_B.weight"] = got[b_attr].T
    return out


MODEL_PATHS: dict = {}


def remember_paths(model):
    MODEL_PATHS.clear()
    MODEL_PATHS.update(dict(model.named_modules()))


def assert_same_grads(torch_grads, mlx_grads, atol=ATOL):
    assert set(torch_grads) == set(mlx_grads)
    for name, want in torch_grads.items():
        np.testing.assert_allclose(mlx_grads[name], want, atol=atol, rtol=1e-3, err_msg=name)


# --- models ------------------------------------------------------------------------------------

def test_standin_logits_match_torch_with_and_without_lora(standin_dir, tmp_path):
    from train.mlx.models import load_mlx_base
    from train.models import load_base

    model, tok, info = load_base(str(standin_dir))
    ids = tok("Plan a trip to Paris with two friends", return_tensors="pt")["input_ids"]
    base = load_mlx_base(str(standin_dir))
    base.model.eval()
    assert base.base_info["identity"] == info["identity"]
    with torch.no_grad():
        plain = model(ids).logits.numpy()
    np.testing.assert_allclose(np.array(base.model(mx.array(ids.numpy()))), plain, atol=ATOL)
    peft = peft_with_random_lora(model)
    with torch.no_grad():
        adapted = peft(ids).logits.numpy()
    twin, loras = mlx_twin(standin_dir, peft, tmp_path)
    assert len(loras) == 2 * 7
    got = np.array(twin.model(mx.array(ids.numpy())))
    assert np.abs(adapted - plain).max() > 1e-2          # the LoRA matters
    np.testing.assert_allclose(got, adapted, atol=ATOL)


def test_afm_logits_match_the_torch_port_and_rope_theta_comes_from_the_checkpoint(assets, tmp_path):
    from mlx_lm.models import afm7

    from train.mlx.models import load_mlx_base
    from train.models import load_base

    for kv_quant in ("off", "device"):
        model, tok, _ = load_base(str(assets), kv_quant=kv_quant)
        ids = tok("plan the task title description question", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = model(ids).logits.numpy()
        base = load_mlx_base(str(assets), kv_quant=kv_quant)
        base.model.eval()
        assert base.model.args.rope_theta == model.config.rope_theta == 500000.0
        np.testing.assert_allclose(np.array(base.model(mx.array(ids.numpy()))), want, atol=ATOL)
    # --kv-quant device in the torch port equals mlx-lm's own afm7 quantiser (its forward).
    native = load_mlx_base(str(assets), kv_quant="off")
    for layer in native.model.model.layers:
        layer.self_attn.__class__ = afm7.Attention
    native.model.eval()
    np.testing.assert_allclose(np.array(native.model(mx.array(ids.numpy()))), want, atol=ATOL)
    off, _, _ = load_base(str(assets))
    with torch.no_grad():
        assert np.abs(off(ids).logits.numpy() - want).max() > 1e-4   # quantising changes logits


def test_afm_lora_from_mlx_loads_into_the_torch_port_with_the_same_logits(assets, tmp_path):
    from peft import PeftModel

    from train.mlx.lora import apply_lora, save_peft_adapter
    from train.mlx.models import load_mlx_base
    from train.models import load_base

    base = load_mlx_base(str(assets))
    loras = apply_lora(base, APPLE_LORA_TARGETS, 4, 8, 0.0)
    # Apple's set: 7 modules per regular layer, 5 per KV-reuse layer.
    n_regular = base.num_regular_layers
    assert len(loras) == 7 * n_regular + 5 * (len(base.model.layers) - n_regular)
    for module, part in loras.values():
        attr = "lora_b" if part is None else f"lora_b_{part}"
        setattr(module, attr, mx.random.normal(getattr(module, attr).shape) * 0.05)
    save_peft_adapter(loras, tmp_path / "run", r=4, alpha=8, dropout=0.0,
                      targets=APPLE_LORA_TARGETS, base_name=str(assets))
    model, tok, _ = load_base(str(assets))
    peft = PeftModel.from_pretrained(model, str(tmp_path / "run"))
    ids = tok("plan the task title", return_tensors="pt")["input_ids"]
    base.model.eval()
    with torch.no_grad():
        want = peft(ids).logits.numpy()
    np.testing.assert_allclose(np.array(base.model(mx.array(ids.numpy()))), want, atol=ATOL)


# --- data and losses -----------------------------------------------------------------------------

def test_sft_tokens_equal_trls(standin_dir, sft_data_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from train.mlx.data import IGNORE, sft_examples
    from train.models import load_base

    rows = [json.loads(line) for line in (sft_data_dir / "train.jsonl").open()][:6]
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    model, tok, _ = load_base(str(standin_dir))
    trainer = SFTTrainer(model=model, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         args=SFTConfig(output_dir=str(tmp_path), completion_only_loss=True,
                                        max_length=300, use_cpu=True, report_to="none"))
    ours = sft_examples(tok, rows, 300)
    theirs = list(trainer.train_dataset)
    assert [e.input_ids for e in ours] == [t["input_ids"] for t in theirs]
    want_labels = [t["labels"] if "labels" in t else
                   [i if m else IGNORE for i, m in zip(t["input_ids"], t["completion_mask"])]
                   for t in theirs]
    assert [e.labels for e in ours] == want_labels


def test_sft_loss_and_lora_gradients_equal_torch(standin_dir, tmp_path):
    from train.mlx.data import pad_batch, sft_examples
    from train.mlx.losses import sft_loss
    from train.models import load_base

    model, tok, _ = load_base(str(standin_dir))
    peft = peft_with_random_lora(model)
    examples = sft_examples(tok, short_rows(3), 256)
    ids, labels, mask = pad_batch(examples, tok.pad_token_id)
    t_ids = torch.tensor(np.array(ids), dtype=torch.long)
    t_labels = torch.tensor(np.array(labels), dtype=torch.long)
    out = peft(input_ids=t_ids, attention_mask=torch.tensor(np.array(mask)), labels=t_labels)
    out.loss.backward()
    twin, loras = mlx_twin(standin_dir, peft, tmp_path)
    remember_paths(twin.model)

    def mean_loss(m):
        total, count = sft_loss(m, ids, labels)
        return total / count

    loss, grads = nn.value_and_grad(twin.model, mean_loss)(twin.model)
    assert abs(loss.item() - out.loss.item()) < ATOL
    assert_same_grads(torch_lora_grads(peft), mlx_lora_grads(loras, grads))


@pytest.mark.parametrize("completion_only", [True, False])
def test_orpo_tokens_loss_and_lora_gradients_equal_trls(standin_dir, tmp_path, completion_only):
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig

    from train.mlx.data import orpo_examples, pad_batch
    from train.mlx.losses import orpo_loss
    from train.models import load_base
    from train.orpo import orpo_trainer_class

    beta = 0.1
    pairs = short_pairs(2)
    model, tok, _ = load_base(str(standin_dir))
    peft = peft_with_random_lora(model)
    trainer = orpo_trainer_class(completion_only)(
        model=peft, args=ORPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, max_length=256,
                                    use_cpu=True, report_to="none", remove_unused_columns=False,
                                    per_device_train_batch_size=2),
        train_dataset=Dataset.from_list(pairs), processing_class=tok)
    ours = orpo_examples(tok, pairs, 256)
    theirs = list(trainer.train_dataset)
    for (chosen, rejected), t in zip(ours, theirs):
        assert chosen.input_ids == t["chosen_input_ids"] and chosen.labels == t["chosen_labels"]
        assert rejected.input_ids == t["rejected_input_ids"]
        assert rejected.labels == t["rejected_labels"]
    batch = trainer.data_collator(theirs)
    loss, _ = trainer.get_batch_loss_metrics(peft, batch)
    loss.backward()

    twin, loras = mlx_twin(standin_dir, peft, tmp_path)
    remember_paths(twin.model)
    width = max(len(e.input_ids) for pair in ours for e in pair)
    chosen = pad_batch([c for c, _ in ours], tok.pad_token_id, width)
    rejected = pad_batch([r for _, r in ours], tok.pad_token_id, width)

    def fn(m):
        return orpo_loss(m, chosen, rejected, beta, completion_only)[0]

    got, grads = nn.value_and_grad(twin.model, fn)(twin.model)
    assert abs(got.item() - loss.item()) < ATOL
    assert_same_grads(torch_lora_grads(peft), mlx_lora_grads(loras, grads))


@pytest.mark.parametrize("kv_quant", ["off", "device"])
def test_afm_kv_lora_learns_and_its_gradients_equal_the_torch_ports(assets, tmp_path, kv_quant):
    from mlx_lm.models import afm7

    from train.mlx.data import pad_batch, sft_examples
    from train.mlx.losses import sft_loss
    from train.models import load_base

    model, tok, _ = load_base(str(assets), kv_quant=kv_quant)
    peft = peft_with_random_lora(model)
    rows = [{"prompt": [{"role": "user", "content": "plan the task"}],
             "completion": [{"role": "assistant", "content": "title description question"}]}] * 2
    examples = sft_examples(tok, rows, 128)
    ids, labels, mask = pad_batch(examples, tok.pad_token_id)
    out = peft(input_ids=torch.tensor(np.array(ids), dtype=torch.long),
               labels=torch.tensor(np.array(labels), dtype=torch.long))
    out.loss.backward()
    want = torch_lora_grads(peft)
    twin, loras = mlx_twin(assets, peft, tmp_path, kv_quant=kv_quant)
    remember_paths(twin.model)

    def mean_loss(m):
        total, count = sft_loss(m, ids, labels)
        return total / count

    loss, grads = nn.value_and_grad(twin.model, mean_loss)(twin.model)
    got = mlx_lora_grads(loras, grads)
    kv = [n for n in got if ".k_proj." in n or ".v_proj." in n]
    assert kv and all(np.abs(got[n]).max() > 1e-6 for n in kv)
    assert abs(loss.item() - out.loss.item()) < ATOL
    assert_same_grads(want, got)
    if kv_quant == "device":
        # mlx-lm's own afm7 quantiser rounds without a straight-through gradient: K/V LoRA gets 0.
        for layer in twin.model.model.layers:
            layer.self_attn.__class__ = afm7.Attention
        _, grads = nn.value_and_grad(twin.model, mean_loss)(twin.model)
        native = mlx_lora_grads(loras, grads)
        assert all(np.abs(native[n]).max() == 0 for n in kv)


# --- the stages ----------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def mlx_sft(standin_dir, tmp_path, name="mlx-sft", **over):
    from train.config import load_config
    from train.sft import SFTRunConfig, run_sft
    train = write_jsonl(tmp_path / "train.jsonl", short_rows(4))
    val = write_jsonl(tmp_path / "val.jsonl", short_rows(2))
    values = dict(model_name_or_path=str(standin_dir), train_file=str(train), val_file=str(val),
                  output_dir=str(tmp_path / name), backend="mlx", max_steps=3,
                  per_device_train_batch_size=2, learning_rate=5e-3, logging_steps=1,
                  lora_r=4, lora_alpha=8, lora_dropout=0.0, max_length=128, progress=False,
                  save_strategy="steps", save_steps=2, device="cpu", precision="fp32")
    values.update(over)
    return run_sft(load_config(SFTRunConfig, None, values))


def test_mlx_sft_writes_the_torch_run_folder_and_exports(standin_dir, tmp_path):
    from export.fmadapter import main as export_main
    from train.models import load_with_adapter

    out = mlx_sft(standin_dir, tmp_path)
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "mlx" and run["stage"] == "sft"
    m = run["metrics"]
    assert m["global_step"] == 3 and len(m["train_loss"]) == 3
    assert m["initial_eval_loss"] is not None and m["final_eval_loss"] < m["initial_eval_loss"]
    assert (out / "loss_curve.png").stat().st_size > 0
    assert (out / "checkpoints" / "checkpoint-2" / "mlx_trainer_state.json").exists()
    model, _, _ = load_with_adapter(str(standin_dir), out)       # the torch side reads it
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert export_main(["--adapter", str(out), "--name", "mlx_planner", "--out",
                        str(tmp_path / "pkg"), "--allow-stand-in", "--quiet"]) == 0
    assert (tmp_path / "pkg" / "mlx_planner.fmadapter" / "adapter_weights.bin").exists()


def test_mlx_resume_continues_and_backends_refuse_each_others_checkpoints(standin_dir, tmp_path):
    from train.config import ConfigError

    full = mlx_sft(standin_dir, tmp_path, name="full", max_steps=4)
    part = mlx_sft(standin_dir, tmp_path, name="part", max_steps=4)
    ckpt = part / "checkpoints" / "checkpoint-2"
    resumed = mlx_sft(standin_dir, tmp_path, name="part", max_steps=4,
                      resume_from_checkpoint=str(ckpt))
    a = json.loads((full / "run.json").read_text())["metrics"]["train_loss"]
    b = json.loads((resumed / "run.json").read_text())["metrics"]["train_loss"]
    np.testing.assert_allclose(b, a, atol=1e-5)       # history restored, steps 3-4 identical
    with pytest.raises(ConfigError, match="written by the MLX backend"):
        from train.common import checkpoint_to_resume
        checkpoint_to_resume(part, "latest")
    torch_ckpt = tmp_path / "torch-run" / "checkpoints" / "checkpoint-1"
    torch_ckpt.mkdir(parents=True)
    (torch_ckpt / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="written by the torch backend"):
        mlx_sft(standin_dir, tmp_path, name="torch-run", resume_from_checkpoint="latest")


def test_mlx_orpo_continues_an_sft_adapter(standin_dir, tmp_path):
    from train.config import load_config
    from train.orpo import ORPORunConfig, run_orpo

    sft = mlx_sft(standin_dir, tmp_path, max_steps=1)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", short_pairs(3))
    cfg = load_config(ORPORunConfig, None, dict(
        model_name_or_path=str(standin_dir), train_file=str(pairs), val_file=str(pairs),
        output_dir=str(tmp_path / "orpo"), backend="mlx", adapter_init=str(sft), max_steps=2,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
        max_length=128, progress=False, save_strategy="no", device="cpu", precision="fp32"))
    out = run_orpo(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "mlx" and run["started_from"]["run_dir"] == str(sft)
    assert run["lora"]["r"] == 4                              # the SFT adapter's shape wins
    assert len(run["metrics"]["log_odds_ratio"]) == 2
    assert run["metrics"]["val_logp_margin_before"] is not None
    assert (out / "preference_curves.png").exists()


def test_missing_mlx_and_unsupported_keys_are_named(standin_dir, tmp_path, monkeypatch):
    import importlib.util

    from train.config import ConfigError
    with pytest.raises(ConfigError, match="packing"):
        mlx_sft(standin_dir, tmp_path, packing=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mlx", "mlx_lm") else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install -c constraints.txt -e '\.\[mlx\]'"):
        mlx_sft(standin_dir, tmp_path)


# --- the MLX engine ------------------------------------------------------------------------------

def test_eval_run_engine_mlx_gives_the_torch_engines_outputs_on_all_30_cases(
        standin_dir, tiny_sft_run, tmp_path):
    from eval.run import run_eval

    runs = {}
    for engine in ("torch", "mlx"):
        runs[engine] = run_eval(base=str(standin_dir), adapter=str(tiny_sft_run), judge="offline",
                                label=f"engine-{engine}", note="engine parity",
                                db=tmp_path / "x.db",
                                out_dir=tmp_path / engine, max_new_tokens=400, engine=engine,
                                progress=False, quiet=True)
    torch_cases, mlx_cases = runs["torch"]["cases"], runs["mlx"]["cases"]
    assert len(mlx_cases) == 30
    # The same text on every case, up to near-ties of the torch logits where the two engines'
    # last bits may pick either token (tests/greedy_ties.py); equal texts score equally.
    from eval.generate import render_prompt
    from train.models import load_with_adapter
    model, tok, _ = load_with_adapter(str(standin_dir), str(tiny_sft_run))
    prompts = [render_prompt(tok, c["input"]) for c in torch_cases]
    assert_same_greedy_texts(model, tok, prompts, [c["raw_output"] for c in torch_cases],
                             [c["raw_output"] for c in mlx_cases])
    for tc, mc in zip(torch_cases, mlx_cases):
        if tc["raw_output"] == mc["raw_output"]:
            cid = tc["case_id"]
            assert runs["mlx"]["qualities"][cid] == runs["torch"]["qualities"][cid]
    assert runs["mlx"]["config_hash"] == runs["torch"]["config_hash"]


def test_prefs_sampling_engine_mlx_is_seeded_and_keyed_apart(standin_dir, tiny_sft_run, tmp_path):
    from prefs.student import StudentSpec, sample_student

    spec = StudentSpec(base=str(standin_dir), adapter=str(tiny_sft_run), n=2, max_new_tokens=12,
                       engine="mlx", seed=3)
    inputs = ["Plan a birthday party", "Plan a garden"]
    first = sample_student(inputs, spec, tmp_path / "a.jsonl", progress=False)
    again = sample_student(inputs, spec, tmp_path / "b.jsonl", progress=False)
    assert first == again and all(len(v) == 2 for v in first.values())
    assert spec.key() != StudentSpec(base=str(standin_dir), adapter=str(tiny_sft_run), n=2,
                                     max_new_tokens=12, seed=3).key()


def test_same_lora_from_mlx_and_peft_exports_byte_identical_and_round_trips(standin_dir, tmp_path):
    from export.fmadapter import main as export_main
    from train.mlx.lora import load_peft_adapter, save_peft_adapter
    from train.mlx.models import load_mlx_base
    from train.models import load_base, load_with_adapter

    model, tok, info = load_base(str(standin_dir))
    peft = peft_with_random_lora(model, r=8, alpha=16)
    run_json = {"run_id": "x", "stage": "sft", "base_model": info, "metrics": {},
                "lora": {"r": 8, "alpha": 16}, "data": {"train_sha256": "00" * 32}}
    peft.save_pretrained(str(tmp_path / "peft"))
    base = load_mlx_base(str(standin_dir))
    loras, _ = load_peft_adapter(base, tmp_path / "peft")
    save_peft_adapter(loras, tmp_path / "mlx", r=8, alpha=16, dropout=0.0,
                      targets=list(APPLE_LORA_TARGETS), base_name=str(standin_dir))
    blobs = {}
    for name in ("peft", "mlx"):
        (tmp_path / name / "run.json").write_text(json.dumps(run_json))
        assert export_main(["--adapter", str(tmp_path / name), "--name", f"p_{name}", "--out",
                            str(tmp_path / f"pkg-{name}"), "--allow-stand-in", "--quiet"]) == 0
        blobs[name] = (tmp_path / f"pkg-{name}" / f"p_{name}.fmadapter" /
                       "adapter_weights.bin").read_bytes()
    assert blobs["mlx"] == blobs["peft"]
    assert export_main(["inspect", str(tmp_path / "pkg-mlx" / "p_mlx.fmadapter"), "--to-peft",
                        str(tmp_path / "back")]) == 0
    back, _, _ = load_with_adapter(str(standin_dir), tmp_path / "back")
    ids = tok("Plan a trip to Paris", return_tensors="pt")["input_ids"]
    base.model.eval()
    with torch.no_grad():
        want = back(ids).logits.numpy()
    # One fp16 rounding of the LoRA weights in the package: the tolerance of the export tests.
    np.testing.assert_allclose(np.array(base.model(mx.array(ids.numpy()))), want, atol=1e-2)


def test_gradient_checkpointing_keeps_the_gradients(assets, tmp_path):
    from train.mlx.data import pad_batch, sft_examples
    from train.mlx.losses import sft_loss
    from train.mlx.trainer import checkpoint_layers
    from train.models import load_base

    model, tok, _ = load_base(str(assets))
    peft = peft_with_random_lora(model)
    rows = [{"prompt": [{"role": "user", "content": "plan the task"}],
             "completion": [{"role": "assistant", "content": "title question"}]}]
    ids, labels, _ = pad_batch(sft_examples(tok, rows, 64), tok.pad_token_id)

    def grads_of(twin, loras):
        remember_paths(twin.model)
        loss_fn = lambda m: (lambda t: t[0] / t[1])(sft_loss(m, ids, labels))  # noqa: E731
        return mlx_lora_grads(loras, nn.value_and_grad(twin.model, loss_fn)(twin.model)[1])

    plain = grads_of(*mlx_twin(assets, peft, tmp_path / "a"))
    twin, loras = mlx_twin(assets, peft, tmp_path / "b")
    kinds = {type(layer) for layer in twin.model.layers}
    checkpoint_layers(twin)
    # each wrapped layer gets its own subclass: other models of the same class stay unwrapped
    assert all(type(layer) not in kinds for i, layer in enumerate(twin.model.layers)
               if i != twin.num_regular_layers - 1)
    assert_same_grads(plain, grads_of(twin, loras), atol=1e-6)


def test_mlx_sft_on_apples_base_with_device_kv_quant(assets, tmp_path):
    from peft import PeftModel

    from train.config import load_config
    from train.models import load_base
    from train.sft import SFTRunConfig, run_sft

    rows = [{"prompt": [{"role": "system", "content": "plan the task"},
                        {"role": "user", "content": f"Task: plan the task {i}"}],
             "completion": [{"role": "assistant", "content": "title description question"}]}
            for i in range(4)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = load_config(SFTRunConfig, None, dict(
        model_name_or_path=str(assets), train_file=str(train), val_file=str(train),
        output_dir=str(tmp_path / "afm"), backend="mlx", kv_quant="device", max_steps=3,
        per_device_train_batch_size=2, learning_rate=1e-2, logging_steps=1, lora_r=4,
        lora_alpha=8, lora_dropout=0.0, max_length=64, progress=False, save_strategy="no",
        gradient_checkpointing=True, device="cpu", precision="fp32"))
    out = run_sft(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "mlx" and run["base_model"]["architecture"] == "AFMTextV7ForCausalLM"
    assert run["config"]["kv_quant"] == "device"
    assert run["metrics"]["final_eval_loss"] < run["metrics"]["initial_eval_loss"]
    model, _, info = load_base(str(assets))
    assert run["base_model"]["identity"] == info["identity"]
    peft = PeftModel.from_pretrained(model, str(out))
    trained = {n for n, p in peft.named_parameters() if "lora_B" in n and p.abs().sum() > 0}
    assert any(".k_proj." in n for n in trained) and any(".v_proj." in n for n in trained)
