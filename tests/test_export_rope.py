"""The rotary row permutation: interleaved attention on the training weights equals half-split
attention on the exported (permuted) weights.

A small numpy reference of one attention layer with a LoRA on Q and K (head_dim 128 as in AFM,
2 query heads sharing 1 key/value head). The exported LoRA B goes through export.tensors.prepare,
the function the exporter itself uses; the runtime's own base projections are permuted the same
way (that is what Apple's runtime weights are). The same check is then made on the project's own
AFM model (train.afm, tiny geometry), whose PEFT key names are also checked against the layout.
"""
from __future__ import annotations

import numpy as np
import pytest

from export.layouts import interleaved_to_half_split, permute_rows
from export.tensors import prepare

HEAD_DIM, N_Q, N_KV, HIDDEN, RANK, T = 128, 2, 1, 64, 4, 9
THETA = 500_000.0


def angles(t: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    inv = THETA ** (-np.arange(0, d, 2) / d)            # one frequency per pair
    ang = np.arange(t)[:, None] * inv[None, :]          # (t, d/2)
    return np.cos(ang), np.sin(ang)


def rope_interleaved(x: np.ndarray) -> np.ndarray:      # pairs (2i, 2i+1)
    cos, sin = angles(x.shape[0], x.shape[1])
    a, b = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2], out[:, 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def rope_half_split(x: np.ndarray) -> np.ndarray:       # pairs (i, i + d/2)
    cos, sin = angles(x.shape[0], x.shape[1])
    h = x.shape[1] // 2
    a, b = x[:, :h], x[:, h:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=1)


def attention(x, wq, wk, wv, lora, rope) -> np.ndarray:
    """Causal GQA attention; lora = {name: (A, B, scale)} added to the projections."""
    def proj(w, name):
        a, b, s = lora.get(name, (None, None, 0.0))
        return x @ w.T + (s * (x @ a.T) @ b.T if a is not None else 0.0)
    q, k, v = proj(wq, "q"), proj(wk, "k"), proj(wv, "v")
    mask = np.triu(np.full((T, T), -np.inf), 1)
    heads = []
    for h in range(N_Q):
        kv = h * N_KV // N_Q
        qh = rope(q[:, h * HEAD_DIM:(h + 1) * HEAD_DIM])
        kh = rope(k[:, kv * HEAD_DIM:(kv + 1) * HEAD_DIM])
        scores = qh @ kh.T / np.sqrt(HEAD_DIM) + mask
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        heads.append((p / p.sum(axis=1, keepdims=True)) @ v[:, kv * HEAD_DIM:(kv + 1) * HEAD_DIM])
    return np.concatenate(heads, axis=1)


def fp16_exact(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float16).astype(np.float64)


@pytest.fixture()
def weights():
    rng = np.random.default_rng(0)
    w = {"x": rng.standard_normal((T, HIDDEN)),
         "wq": rng.standard_normal((N_Q * HEAD_DIM, HIDDEN)) * 0.2,
         "wk": rng.standard_normal((N_KV * HEAD_DIM, HIDDEN)) * 0.2,
         "wv": rng.standard_normal((N_KV * HEAD_DIM, HIDDEN)) * 0.2}
    for name, rows in (("q", N_Q * HEAD_DIM), ("k", N_KV * HEAD_DIM), ("v", N_KV * HEAD_DIM)):
        w[f"a{name}"] = fp16_exact(rng, (RANK, HIDDEN), 0.3)
        w[f"b{name}"] = fp16_exact(rng, (rows, RANK), 0.3)
    return w


def exported_b(b: np.ndarray, key: str, rotary: bool) -> np.ndarray:
    bits = prepare(b, key=key, is_b=True, factor=1.0, rotary=rotary, head_dim=HEAD_DIM)
    return bits.view(np.float16).astype(np.float64)


def test_interleaved_on_training_weights_equals_half_split_on_exported_weights(weights):
    w, s = weights, 0.5
    train = attention(w["x"], w["wq"], w["wk"], w["wv"],
                      {n: (w[f"a{n}"], w[f"b{n}"], s) for n in "qkv"}, rope_interleaved)
    device_lora = {"q": (w["aq"], exported_b(w["bq"], "q.lora_B", True), s),
                   "k": (w["ak"], exported_b(w["bk"], "k.lora_B", True), s),
                   "v": (w["av"], exported_b(w["bv"], "v.lora_B", False), s)}
    device = attention(w["x"], permute_rows(w["wq"], HEAD_DIM), permute_rows(w["wk"], HEAD_DIM),
                       w["wv"], device_lora, rope_half_split)
    np.testing.assert_allclose(device, train, rtol=1e-10, atol=1e-12)
    assert not np.allclose(train, attention(w["x"], w["wq"], w["wk"], w["wv"], {}, rope_interleaved))


def test_without_the_permutation_the_result_differs(weights):
    """The control: skipping the permutation on the LoRA B (base permuted) is visibly wrong."""
    w, s = weights, 0.5
    train = attention(w["x"], w["wq"], w["wk"], w["wv"],
                      {n: (w[f"a{n}"], w[f"b{n}"], s) for n in "qk"}, rope_interleaved)
    unpermuted = attention(w["x"], permute_rows(w["wq"], HEAD_DIM),
                           permute_rows(w["wk"], HEAD_DIM), w["wv"],
                           {n: (w[f"a{n}"], w[f"b{n}"], s) for n in "qk"}, rope_half_split)
    assert not np.allclose(unpermuted, train, atol=1e-6)


def test_rotation_itself_commutes_with_the_row_order():
    x = np.random.default_rng(1).standard_normal((T, HEAD_DIM))
    perm = interleaved_to_half_split(HEAD_DIM)
    np.testing.assert_allclose(rope_half_split(x[:, perm]), rope_interleaved(x)[:, perm],
                               rtol=1e-12, atol=1e-12)
    assert list(perm[:3]) == [0, 2, 4] and list(perm[64:67]) == [1, 3, 5]


def test_inverse_permutation_restores_rows():
    b = np.arange(256 * 3).reshape(256, 3)
    back = permute_rows(permute_rows(b, HEAD_DIM), HEAD_DIM, inverse=True)
    np.testing.assert_array_equal(back, b)
    with pytest.raises(ValueError, match="128-row heads"):
        permute_rows(np.zeros((100, 2)), HEAD_DIM)


def test_same_permutation_as_the_afm_model_code():
    """export/ and train/afm/ each define the reorder; they must agree row for row."""
    torch = pytest.importorskip("torch")
    afm_rope = pytest.importorskip("train.afm.rope")
    b = np.random.default_rng(2).standard_normal((2048, 32)).astype(np.float32)
    theirs = afm_rope.permute_rope_rows(torch.from_numpy(b), 128).numpy()
    np.testing.assert_array_equal(permute_rows(b, 128), theirs)


def test_afm_model_interleaved_with_adapter_equals_half_split_with_exported_adapter():
    """The project's own AFM model (tiny geometry): interleaved rotary + the trained LoRA gives
    the same logits as half-split rotary + base Q/K rows (and QK-norm weights) reordered as the
    runtime's are + the LoRA B rows the exporter writes."""
    torch = pytest.importorskip("torch")
    afm = pytest.importorskip("train.afm")
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = afm.tiny_config(vocab_size=64)
    hd = cfg.head_dim
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=afm.LORA_TARGET_MODULES, lora_dropout=0.0)
    trained = get_peft_model(afm.AFMTextV7ForCausalLM(cfg), lora).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_" in name:  # fp16-representable, so the export's cast is exact
                p.copy_((torch.randn(p.shape, generator=gen) * 0.2).half().float())

    runtime_cfg = afm.tiny_config(vocab_size=64, rope_layout="half-split")
    runtime = get_peft_model(afm.AFMTextV7ForCausalLM(runtime_cfg), lora).eval()
    state = {}
    for key, value in trained.state_dict().items():
        v = value.numpy()
        if "lora_B" in key and (".q_proj." in key or ".k_proj." in key):
            v = prepare(v, key=key, is_b=True, factor=1.0, rotary=True, head_dim=hd)
            v = v.view(np.float16).astype(np.float32)
        elif key.endswith(("q_proj.base_layer.weight", "k_proj.base_layer.weight",
                           "q_norm.weight", "k_norm.weight")):
            v = permute_rows(v, hd)
        state[key] = torch.from_numpy(np.ascontiguousarray(v))
    runtime.load_state_dict(state)

    ids = torch.randint(0, 64, (2, 11), generator=gen)
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        got = runtime(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the control: the same runtime without permuting the LoRA B rows is wrong
    for key in state:
        if "lora_B" in key and (".q_proj." in key or ".k_proj." in key):
            state[key] = trained.state_dict()[key]
    runtime.load_state_dict(state)
    with torch.no_grad():
        assert not torch.allclose(runtime(input_ids=ids).logits, want, atol=1e-3)


def test_afm_peft_keys_follow_the_layout_segments():
    """A PEFT adapter on the project's AFM model names its tensors the way the layout expects:
    7 LoRAs on regular layers, q/o/gate/up/down on KV-reuse layers (tiny geometry, same rules)."""
    pytest.importorskip("torch")
    afm = pytest.importorskip("train.afm")
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    from export.layouts import AFM_V7, LORA_KEY_RE

    cfg = afm.tiny_config(vocab_size=64)
    model = get_peft_model(afm.AFMTextV7ForCausalLM(cfg),
                           LoraConfig(r=4, target_modules=afm.LORA_TARGET_MODULES))
    found: dict[int, set] = {}
    for key in get_peft_model_state_dict(model):
        m = LORA_KEY_RE.match(key)
        assert m, key
        found.setdefault(int(m["layer"]), set()).add(m["module"])
    (_, _, regular), (_, _, reuse) = AFM_V7["segments"]
    for layer, modules in found.items():
        want = regular if layer < cfg.num_regular_layers else reuse
        assert modules == set(want), (layer, modules)
    assert sorted(found) == list(range(cfg.num_hidden_layers))
