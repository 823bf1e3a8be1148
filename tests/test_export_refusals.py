"""Every refusal of `python -m export.fmadapter`, each leaving no package (and no temp folder).

Full-size afm-text-v7 adapters share one in-memory set of random tensors; each case writes a
variant run folder and exports it through the CLI entry point.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.fmadapter import main
from export.synthetic import synthetic_run, synthetic_standin_run, synthetic_state

Q3 = "base_model.model.model.layers.3.self_attn.q_proj"
DOWN50_B = "base_model.model.model.layers.50.mlp.down_proj.lora_B.weight"


@pytest.fixture(scope="module")
def state():
    return synthetic_state(seed=3)


@pytest.fixture(autouse=True)
def _remove_big_files(tmp_path):
    """pytest keeps recent temp folders; 133 MB adapters should not pile up there."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def export(run, out, name="planner", *extra) -> int:
    return main(["--adapter", str(run), "--name", name, "--out", str(out), "--quiet", *extra])


def refused(capsys, run, tmp_path, *needles, name="planner", extra=()):
    out = tmp_path / "out"
    assert export(run, out, name, *extra) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, (n, err)
    # no package, no temp folder, and not even the output folder we would have created
    assert not out.exists(), list(out.iterdir())
    return err


def test_nan_mid_stream_is_refused_naming_the_tensor(state, tmp_path, capsys):
    bad = state[DOWN50_B].copy()
    bad[100, 7] = np.nan
    run = synthetic_run(tmp_path / "run", state=state, tensors={DOWN50_B: bad})
    err = refused(capsys, run, tmp_path, DOWN50_B, "NaN at flat index 3207")
    assert "blob 649:" in err  # 490 segment-0 blobs + 15 layers x 10 + 9: most of the file written


def test_value_beyond_fp16_range_is_refused(state, tmp_path, capsys):
    big = state[f"{Q3}.lora_A.weight"].astype(np.float32)
    big[0, 5] = 70000.0
    run = synthetic_run(tmp_path / "run", state=state, tensors={f"{Q3}.lora_A.weight": big})
    refused(capsys, run, tmp_path, f"{Q3}.lora_A.weight", "beyond fp16 range")


def test_scale_fold_that_overflows_fp16_is_refused(tmp_path, capsys):
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    b = np.full((96, 8), 0.01, dtype=np.float32)
    b[3, 3] = 20000.0  # fine as it is, x4 after folding alpha/r = 2 into the device's 0.5
    run = synthetic_standin_run(tmp_path / "run", tensors={key: b})
    refused(capsys, run, tmp_path, key, "after folding the LoRA scale (x4)",
            extra=["--allow-stand-in"])


def test_missing_lora_module_is_refused(state, tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", state=state, tensors={f"{Q3}.lora_B.weight": None})
    refused(capsys, run, tmp_path, f"missing LoRA tensor '{Q3}.lora_B.weight'")


def test_extra_lora_module_is_refused(state, tmp_path, capsys):
    # segment-1 layers reuse keys/values: a LoRA on layer 40's k_proj has no place on device
    extra = "base_model.model.model.layers.40.self_attn.k_proj.lora_A.weight"
    run = synthetic_run(tmp_path / "run", state=state, tensors={
        extra: np.zeros((32, 2048), np.float16),
        "base_model.model.lm_head.weight": np.zeros((4, 4), np.float16)})
    refused(capsys, run, tmp_path, f"extra tensor '{extra}'",
            "extra tensor 'base_model.model.lm_head.weight'")


def test_wrong_shape_is_refused(state, tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", state=state,
                        tensors={f"{Q3}.lora_A.weight": np.zeros((32, 1024), np.float16)})
    refused(capsys, run, tmp_path, f"{Q3}.lora_A.weight", "[32, 1024]", "[32, 2048]")


def test_wrong_rank_is_refused(tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", rank=16, seed=4)
    refused(capsys, run, tmp_path, "r = 16", "rank 32")


def test_stand_in_rank_mismatch_between_config_and_tensors_is_refused(tmp_path, capsys):
    run = synthetic_standin_run(tmp_path / "run", rank=8)
    cfg = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**cfg, "r": 4}))
    refused(capsys, run, tmp_path, "layers.0.self_attn.q_proj.lora_A.weight", "rank 4",
            extra=["--allow-stand-in"])


@pytest.mark.parametrize("name", ["my-adapter", "has space", "", "naïve€"])
def test_invalid_name_is_refused(tmp_path, capsys, name):
    run = synthetic_standin_run(tmp_path / "run")
    refused(capsys, run, tmp_path, "^\\w+$", name=name, extra=["--allow-stand-in"])


def test_stand_in_is_refused_by_default_with_the_reason(tmp_path, capsys):
    run = synthetic_standin_run(tmp_path / "run")
    err = refused(capsys, run, tmp_path, "LlamaForCausalLM", "stand-in", "configs/afm-sft.yaml",
                  "--allow-stand-in", "base-model.pt")
    assert "never be shipped" in err


def test_unrecorded_rope_layout_is_refused(state, tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", state=state, rope_layout=None)
    refused(capsys, run, tmp_path, "base_model.rope_layout is None", "never guessed")


def test_wrong_base_signature_is_refused(state, tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", state=state,
                        base_overrides={"base_signature": "0" * 40})
    refused(capsys, run, tmp_path, "base_signature", "9799725ff8e851184037110b422d891ad3b92ec1")


def test_reserved_creator_defined_key_is_refused(tmp_path, capsys):
    run = synthetic_standin_run(tmp_path / "run")
    refused(capsys, run, tmp_path, "'standIn' is reserved",
            extra=["--allow-stand-in", "--creator-defined", '{"standIn": false}'])


def test_secret_in_description_is_refused_without_echoing_it(tmp_path, capsys, monkeypatch):
    secret = "sk-ant-api03-refusal-test-0123456789"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    run = synthetic_standin_run(tmp_path / "run")
    err = refused(capsys, run, tmp_path, "--description",
                  extra=["--allow-stand-in", "--description", f"key {secret}"])
    assert secret not in err


def test_existing_package_is_kept_unless_force(tmp_path, capsys):
    run = synthetic_standin_run(tmp_path / "run")
    out = tmp_path / "out"
    assert export(run, out, "planner", "--allow-stand-in") == 0
    pkg = out / "planner.fmadapter"
    (pkg / "metadata.json").write_text("sentinel")  # a marker that an overwrite would erase
    assert export(run, out, "planner", "--allow-stand-in") == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (pkg / "metadata.json").read_text() == "sentinel"
    assert export(run, out, "planner", "--allow-stand-in", "--force") == 0
    assert (pkg / "metadata.json").read_text().startswith("{")
    assert sorted(p.name for p in out.iterdir()) == ["planner.fmadapter"]  # nothing left over


def test_refusal_in_an_existing_output_folder_leaves_only_what_was_there(state, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    bad = state[DOWN50_B].copy()
    bad[0, 0] = np.inf
    run = synthetic_run(tmp_path / "run", state=state, tensors={DOWN50_B: bad})
    assert export(run, out) == 2
    assert "beyond fp16 range" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf, 1e5, -1e5])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_every_non_finite_or_out_of_range_value_is_caught(bad, dtype):
    from export.plan import ExportError
    from export.tensors import prepare
    arr = np.zeros((4, 8), dtype)
    arr[0, 0], arr[1, 1] = 65504.0, -65504.0  # the extremes are fine
    with np.errstate(over="ignore"):
        arr[2, 3] = bad
    with pytest.raises(ExportError, match="'k'.*flat index 19"):
        prepare(arr, key="k", is_b=False, factor=1.0, rotary=False, head_dim=None)
    arr[2, 3] = 0
    bits = prepare(arr, key="k", is_b=False, factor=1.0, rotary=False, head_dim=None)
    assert bits.view(np.float16)[0, 0] == 65504 and bits.view(np.float16)[1, 1] == -65504


def test_adapter_without_lora_tensors_is_refused(tmp_path, capsys):
    from safetensors.numpy import save_file
    run = synthetic_standin_run(tmp_path / "run")
    save_file({"base_model.model.lm_head.weight": np.zeros((2, 2), np.float32)},
              str(run / "adapter_model.safetensors"))
    refused(capsys, run, tmp_path, "no LoRA tensors", extra=["--allow-stand-in"])


def test_missing_run_record_is_refused(tmp_path, capsys):
    run = synthetic_standin_run(tmp_path / "run")
    (run / "run.json").unlink()
    refused(capsys, run, tmp_path, "run.json: missing", extra=["--allow-stand-in"])


def test_stand_in_layer_missing_a_module_is_refused(tmp_path, capsys):
    up = "base_model.model.model.layers.1.mlp.up_proj"
    run = synthetic_standin_run(tmp_path / "run", tensors={f"{up}.lora_A.weight": None,
                                                           f"{up}.lora_B.weight": None})
    refused(capsys, run, tmp_path, f"missing LoRA tensor '{up}.lora_A.weight'",
            extra=["--allow-stand-in"])
