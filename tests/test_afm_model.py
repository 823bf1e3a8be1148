"""AFMTextV7ForCausalLM: published sizes, Apple's LoRA set, the KV-reuse cache, masks, RoPE layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from train.afm import (LORA_TARGET_MODULES, AFMTextV7Config, AFMTextV7ForCausalLM, permute_rope_rows,
                       tiny_config)
from train.afm.testing import single_thread

VOCAB = 97


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with single_thread():
        yield


def lora(model, rank: int, **kw):
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules=LORA_TARGET_MODULES, **kw))


def random_tiny(seed: int = 0, **overrides) -> AFMTextV7ForCausalLM:
    """A float64 tiny model with weights large enough that greedy decoding is not degenerate."""
    torch.manual_seed(seed)
    model = AFMTextV7ForCausalLM(tiny_config(vocab_size=VOCAB, **overrides)).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.normal_(0.0, 0.35)
            else:
                param.uniform_(0.6, 1.4)
    return model


@pytest.fixture
def full_size_meta():
    """The published full-size model, on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return AFMTextV7ForCausalLM(AFMTextV7Config())


def test_full_size_parameter_counts(full_size_meta):
    base = sum(p.numel() for p in full_size_meta.parameters())
    assert base == 3_111_368_064  # tied head counted once
    peft_model = lora(full_size_meta, 32)
    added = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert added == 66_633_728
    assert round((base + added) / 1e9, 2) == 3.18  # the toolkit checkpoint's figure includes its adapter


def test_layer_structure_gives_apples_lora_set(full_size_meta):
    config = full_size_meta.config
    assert len(full_size_meta.model.layers) == 56 and config.kv_source_layer == 34
    for i, layer in enumerate(full_size_meta.model.layers):
        names = {n.rsplit(".", 1)[-1] for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        expected = set(LORA_TARGET_MODULES) if i <= 34 else {"q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert names == expected, i
    attention = full_size_meta.model.layers[0].self_attn
    assert attention.q_proj.out_features == 16 * 128 and attention.k_proj.out_features == 2 * 128
    assert full_size_meta.model.layers[0].mlp.gate_proj.out_features == 6656
    assert full_size_meta.lm_head.weight is full_size_meta.model.embed_tokens.weight


def test_lora_tensors_are_the_export_layout(full_size_meta):
    layouts = pytest.importorskip("export.layouts")
    state = get_peft_model_state_dict(lora(full_size_meta, 32))
    layout = layouts.afm_text_v7()
    assert {k: tuple(v.shape) for k, v in state.items()} == {s.key: tuple(s.shape) for s in layout.slots}
    assert len(state) == 700
    assert 64 + sum(64 + s.nbytes for s in layout.slots) == 133_312_320


@pytest.mark.slow
def test_full_size_adapter_exports_to_the_700_blob_package(full_size_meta, tmp_path):
    """The adapter of this model (its PEFT names and shapes, random values) through the real exporter."""
    synthetic = pytest.importorskip("export.synthetic")
    fmadapter = pytest.importorskip("export.fmadapter")
    rng = np.random.default_rng(0)
    state = {k: (rng.standard_normal(tuple(v.shape), dtype=np.float32) * 0.02).astype(np.float16)
             for k, v in get_peft_model_state_dict(lora(full_size_meta, 32)).items()}
    run = synthetic.synthetic_run(tmp_path / "run", state=state)
    assert fmadapter.main(["--adapter", str(run), "--name", "afm_full", "--out", str(tmp_path), "--quiet"]) == 0
    weights = tmp_path / "afm_full.fmadapter" / "adapter_weights.bin"
    assert weights.stat().st_size == 133_312_320
    with open(weights, "rb") as fh:
        assert int.from_bytes(fh.read(4), "little") == 700  # blob count in the file header


def test_generation_with_cache_equals_without():
    model = random_tiny()
    prompt = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 7:].tolist())) > 2  # a real continuation, not one repeated token


def test_incremental_decoding_matches_a_full_forward():
    model = random_tiny(seed=2)
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    full = model(ids).logits
    out = model(ids[:, :6], use_cache=True)
    cache, steps = out.cache, [out.logits]
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["DynamicLayer"] * 3 + ["DummyLayer"] * 2  # reuse layers store nothing
    for t in range(6, 10):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        steps.append(out.logits)
    assert cache.get_seq_length() == 10
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)


def test_left_padded_batch_matches_each_sequence_alone():
    model = random_tiny(seed=3)
    g = torch.Generator().manual_seed(3)
    short, long = torch.randint(3, VOCAB, (1, 5), generator=g), torch.randint(3, VOCAB, (1, 9), generator=g)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    together = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for row, alone in enumerate((short, long)):
        single = model.generate(alone, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert together[row, -6:].tolist() == single[0, -6:].tolist()
    last = model(batch, attention_mask=mask).logits[0, -1]
    torch.testing.assert_close(last, model(short).logits[0, -1], rtol=0, atol=1e-9)


def test_interleaved_rope_equals_half_split_with_exporter_permutation():
    """Apple's interleaved model == a half-split model whose Q/K rows (and QK-norm weights) are
    permuted evens-then-odds per head — also with a LoRA whose Q/K B matrices get the same permutation."""
    interleaved = random_tiny(seed=4)
    head_dim = interleaved.config.head_dim
    half_split = AFMTextV7ForCausalLM(tiny_config(vocab_size=VOCAB, rope_layout="half-split")).double().eval()
    rotary = ("q_proj.weight", "k_proj.weight", "q_norm.weight", "k_norm.weight")
    state = {k: permute_rope_rows(v, head_dim) if k.endswith(rotary) else v
             for k, v in interleaved.state_dict().items()}
    half_split.load_state_dict(state)
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))
    base_logits = interleaved(ids).logits
    torch.testing.assert_close(half_split(ids).logits, base_logits, rtol=0, atol=1e-10)

    a = lora(interleaved, 4, init_lora_weights=False).eval()
    b = lora(half_split, 4).eval()
    permuted = {k: permute_rope_rows(v, head_dim) if (".q_proj.lora_B" in k or ".k_proj.lora_B" in k) else v
                for k, v in get_peft_model_state_dict(a).items()}
    set_peft_model_state_dict(b, permuted)
    assert not torch.allclose(a(ids).logits, base_logits)  # the adapter matters
    torch.testing.assert_close(b(ids).logits, a(ids).logits, rtol=0, atol=1e-10)


def test_permutation_agrees_with_the_exporter():
    layouts = pytest.importorskip("export.layouts")
    b = torch.randn(3 * 16, 4, dtype=torch.float64)
    assert torch.equal(permute_rope_rows(b, 16), torch.from_numpy(layouts.permute_rows(b.numpy(), 16)))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_every_lora_gradient(reentrant):
    def gradients(checkpointing: bool):
        torch.manual_seed(5)
        model = lora(AFMTextV7ForCausalLM(tiny_config(vocab_size=VOCAB)), 4, init_lora_weights=False)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.enable_input_require_grads()
        ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == 2 * (3 * 7 + 2 * 5)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_labels_give_the_shifted_cross_entropy():
    model = random_tiny(seed=6)
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    labels = ids.clone()
    labels[:, :2] = -100
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected.to(out.loss.dtype))


def test_save_pretrained_reloads_through_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = random_tiny(seed=7).float()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "afm_text_v7"
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is AFMTextV7ForCausalLM
    assert again.lm_head.weight is again.model.embed_tokens.weight
    ids = torch.randint(3, VOCAB, (1, 5))
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_config_rejects_impossible_geometry():
    with pytest.raises(ValueError, match="rope_layout='neox'"):
        AFMTextV7Config(rope_layout="neox")
    with pytest.raises(ValueError, match="num_kv_reuse_layers=56"):
        AFMTextV7Config(num_kv_reuse_layers=56)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        AFMTextV7Config(tie_word_embeddings=False)
