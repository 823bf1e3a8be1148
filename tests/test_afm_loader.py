"""Loading a toolkit assets folder: a synthetic base-model.pt built here with the toolkit's key names."""
from __future__ import annotations

import re

import pytest
import torch

from train.afm import AFM_26_0_SIGNATURE, is_afm_assets, load_afm, tiny_config
from train.afm.keymap import map_checkpoint
from train.afm.testing import single_thread, toolkit_state_dict, train_tiny_sentencepiece, write_synthetic_assets

CONFIG = tiny_config(vocab_size=160)  # the tiny tokenizer has 160 pieces


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_synthetic_assets(tmp_path_factory.mktemp("toolkit") / "assets", CONFIG)


@pytest.fixture(scope="module")
def loaded(assets):
    return load_afm(assets)


def test_every_checkpoint_key_is_mapped_or_deliberately_skipped():
    state = toolkit_state_dict(CONFIG)
    mapped = map_checkpoint(state, CONFIG)
    assert mapped.unmatched == [] and mapped.problems == []
    regular, reuse = CONFIG.num_regular_layers, CONFIG.num_kv_reuse_layers
    # LoRA tensors: q,k,v,o,gate,up,down (A and B) per regular layer; q,o,gate,up,down per reuse layer.
    assert len(mapped.skipped_adapter) == 14 * regular + 10 * reuse
    assert len(mapped.skipped_quantizer) == 2 * regular
    assert all("kv_quantizer" in k for k in mapped.skipped_quantizer)


def test_weights_land_where_they_belong(loaded):
    model, tokenizer, _ = loaded
    state = toolkit_state_dict(CONFIG)  # same seed as the file on disk
    q_rows, kv_rows = CONFIG.num_attention_heads * CONFIG.head_dim, CONFIG.num_key_value_heads * CONFIG.head_dim
    fused = state["layers.segment_0.layer_1.attention.qkv_transform.wrapped.fused_linear.weight"]
    attention = model.model.layers[1].self_attn
    assert torch.equal(attention.q_proj.weight, fused[:q_rows])
    assert torch.equal(attention.k_proj.weight, fused[q_rows:q_rows + kv_rows])
    assert torch.equal(attention.v_proj.weight, fused[q_rows + kv_rows:])
    assert torch.equal(attention.k_norm.weight, state["layers.segment_0.layer_1.attention.qk_norm.key_norm.weight"])
    first_reuse, reuse_key = model.model.layers[CONFIG.num_regular_layers], "layers.segment_1.layer_0."
    assert torch.equal(first_reuse.self_attn.q_proj.weight, state[reuse_key + "attention.q_transform.wrapped.weight"])
    assert torch.equal(first_reuse.mlp.up_proj.weight,
                       state[reuse_key + "feed_forward.hidden_transform.linear_1.wrapped.weight"])
    assert torch.equal(first_reuse.post_attention_layernorm.weight, state[reuse_key + "feed_forward.norm.weight"])
    assert torch.equal(model.model.norm.weight, state["output_norm.weight"])
    assert torch.equal(model.model.embed_tokens.weight, state["embedding.weight"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.training
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<turn_end>")


def test_geometry_is_read_from_the_checkpoint(loaded):
    config = loaded[0].config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_kv_reuse_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(config, field) == getattr(CONFIG, field), field
    assert config.rope_layout == "interleaved" and config.rope_theta == 500000.0


def test_base_info_for_run_json(loaded, assets):
    info = loaded[2]
    assert info == {
        "name_or_path": str(assets), "revision": None, "identity": info["identity"],
        "architecture": "AFMTextV7ForCausalLM", "rope_layout": "interleaved",
        "base_signature": AFM_26_0_SIGNATURE, "stand_in": False,
    }
    assert re.fullmatch(r"[0-9a-f]{64}", info["identity"])
    assert load_afm(assets)[2]["identity"] == info["identity"]


def test_identity_follows_the_tokenizer_and_weights(assets, tmp_path, loaded):
    other = write_synthetic_assets(tmp_path / "a", CONFIG)
    same = load_afm(other)[2]["identity"]
    assert same == loaded[2]["identity"]  # same bytes in another folder: same base
    train_tiny_sentencepiece(other / "tokenizer.model", seed=1)
    assert load_afm(other)[2]["identity"] != same
    bigger = write_synthetic_assets(tmp_path / "b", tiny_config(vocab_size=160, intermediate_size=216))
    assert load_afm(bigger)[2]["identity"] != same
    (other / "tokenizer.model").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="tokenizer.model"):  # a corrupt tokenizer is refused, not hashed
        load_afm(other)


def test_generates_with_the_chat_template(loaded):
    model, tokenizer, _ = loaded
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "plan the task"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_dtype_and_toolkit_root_are_accepted(assets):
    model, _, info = load_afm(assets.parent, dtype="bfloat16")  # the toolkit root holding assets/
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert info["name_or_path"] == str(assets)
    assert is_afm_assets(assets) and is_afm_assets(assets.parent)
    assert not is_afm_assets(assets / "nowhere") and not is_afm_assets(assets.parent.parent)


def _broken_assets(tmp_path, edit) -> tuple:
    state = toolkit_state_dict(CONFIG)
    edit(state)
    return write_synthetic_assets(tmp_path / "assets", CONFIG, state_dict=state)


def test_a_missing_key_is_listed(tmp_path):
    gone = "layers.segment_1.layer_0.attention.q_norm.query_norm.weight"
    folder = _broken_assets(tmp_path, lambda s: s.pop(gone))
    with pytest.raises(ValueError) as err:
        load_afm(folder)
    message = str(err.value)
    assert str(folder / "base-model.pt") in message
    assert "model weights the checkpoint does not provide (1)" in message
    assert f"model.layers.{CONFIG.num_regular_layers}.self_attn.q_norm.weight" in message


def test_a_misspelled_key_is_listed(tmp_path):
    right = "layers.segment_0.layer_2.feed_forward.hidden_transform.linear_1.wrapped.weight"
    wrong = right.replace("linear_1", "linear_l")
    folder = _broken_assets(tmp_path, lambda s: s.__setitem__(wrong, s.pop(right)))
    with pytest.raises(ValueError) as err:
        load_afm(folder)
    message = str(err.value)
    assert f"checkpoint keys that match no model weight (1):\n    {wrong}" in message
    assert "model.layers.2.mlp.up_proj.weight" in message


def test_wrong_shapes_and_an_untied_head_are_refused(tmp_path):
    def edit(state):
        state["output_transform.weight"] = state["embedding.weight"] + 1.0
        state["layers.segment_0.layer_0.feed_forward.norm.weight"] = torch.ones(CONFIG.hidden_size + 1)

    with pytest.raises(ValueError) as err:
        load_afm(_broken_assets(tmp_path, edit))
    message = str(err.value)
    assert "model.layers.0.post_attention_layernorm.weight: checkpoint (65,), model (64,)" in message
    assert "output_transform.weight differs from embedding.weight" in message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="base-model.pt"):
        load_afm(tmp_path)
    torch.save({}, tmp_path / "base-model.pt")
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        load_afm(tmp_path)
    train_tiny_sentencepiece(tmp_path / "tokenizer.model")
    (tmp_path / "base-model.pt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match="base-model.pt: cannot read as a plain tensor state dict"):
        load_afm(tmp_path)


def test_train_models_dispatches_to_the_afm_loader(assets):
    models = pytest.importorskip("train.models")
    model, _, info = models.load_base(str(assets))
    assert type(model).__name__ == "AFMTextV7ForCausalLM"
    assert info["stand_in"] is False and info["rope_layout"] == "interleaved"


def test_check_command_summarises_or_lists_problems(assets, tmp_path, capsys):
    from train.afm.__main__ import main

    assert main([str(assets)]) == 0
    out = capsys.readouterr().out
    regular, reuse = CONFIG.num_regular_layers, CONFIG.num_kv_reuse_layers
    assert f"{regular} regular + {reuse} KV-reuse layers" in out
    assert f"{14 * regular + 10 * reuse} adapter tensors, {2 * regular} KV-quantizer ranges" in out
    broken = _broken_assets(tmp_path, lambda s: s.pop("output_norm.weight"))
    assert main([str(broken)]) == 1
    assert "model.norm.weight" in capsys.readouterr().err
