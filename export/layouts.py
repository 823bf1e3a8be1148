"""Which PEFT tensors become which blobs, in which order, with which transforms: layouts as data.

A `.fmadapter` weight file stores no names or shapes: a tensor is known only by its position.
A `Layout` is that positional contract written down once: an ordered list of `Slot`s, each naming
the PEFT module and matrix (A or B) it holds, its shape, and whether its rows are rotary rows
that need the interleaved -> half-split permutation. The exporter, the validator and the
converter back to PEFT all read the same list, so the order lives here and nowhere else.

Two kinds exist:
- `afm-text-v7`: Apple's 26.0 system model (35 regular layers + 21 KV-reuse layers, 700 tensors).
  The only layout that yields a package a device can load.
- `stand-in`: derived from a stand-in adapter's own modules (sorted by layer, then q, k, v, o,
  gate, up, down; A before B). A format-conformance package for testing the pipeline; it can
  never load on a device because the system model is a different network.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

AFM_TEXT_V7 = "afm-text-v7"
STAND_IN = "stand-in"
AFM_ARCHITECTURE = "AFMTextV7ForCausalLM"
AFM_SIGNATURE_26_0 = "9799725ff8e851184037110b422d891ad3b92ec1"
# The device applies alpha/rank itself with Apple's fixed alpha 16 and rank 32.
RUNTIME_SCALE = 0.5

MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
                 "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
ROTARY_MODULES = ("q_proj", "k_proj")  # V is not rotated, so its rows are left alone

PEFT_PREFIX = "base_model.model."
LORA_KEY_RE = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\.(?P<parent>self_attn|mlp)\."
    r"(?P<module>[a-z_]+)\.lora_(?P<ab>[AB])\.weight$")

# ---- the AFM text model v7, as data ------------------------------------------------------
AFM_V7 = {
    "rank": 32,
    "head_dim": 128,
    "hidden": 2048,
    "kv_width": 256,
    "ffn": 6656,
    # (first model layer index, number of layers, LoRA modules of each layer, in blob order)
    "segments": [
        (0, 35, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        (35, 21, ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    ],
}
# (in_features, out_features) of each projection, by module name.
AFM_V7_FEATURES = {
    "q_proj": (2048, 2048), "k_proj": (2048, 256), "v_proj": (2048, 256),
    "o_proj": (2048, 2048), "gate_proj": (2048, 6656), "up_proj": (2048, 6656),
    "down_proj": (6656, 2048),
}


@dataclass(frozen=True)
class Slot:
    module: str          # PEFT module path, e.g. "model.layers.3.self_attn.q_proj"
    matrix: str          # "A" (rank x in) or "B" (out x rank)
    shape: tuple[int, int]
    rotary: bool = False  # a B whose rows are rotary query/key rows

    @property
    def key(self) -> str:
        return f"{PEFT_PREFIX}{self.module}.lora_{self.matrix}.weight"

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 2  # fp16


@dataclass(frozen=True)
class Layout:
    name: str
    rank: int
    slots: tuple[Slot, ...]
    head_dim: int | None = None   # rotary head size, for the row permutation
    shippable: bool = False

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(s.module for s in self.slots))

    def describe(self) -> dict | str:
        """What creatorDefined records so a reader can rebuild the layout without the adapter."""
        if self.name == AFM_TEXT_V7:
            return AFM_TEXT_V7
        layers = sorted({module_layer(m) for m in self.modules})
        features: dict[str, list[int]] = {}
        for s in self.slots:
            short = s.module.rsplit(".", 1)[1]
            if s.matrix == "A":
                features.setdefault(short, [0, 0])[0] = s.shape[1]
            else:
                features.setdefault(short, [0, 0])[1] = s.shape[0]
        return {"name": STAND_IN, "layers": layers,
                "modules": {m: features[m] for m in MODULE_ORDER if m in features}}


def module_path(layer: int, module: str) -> str:
    return f"model.layers.{layer}.{MODULE_PARENT[module]}.{module}"


def module_layer(path: str) -> int:
    return int(path.split(".")[2])


def _slots_for(layer: int, module: str, fin: int, fout: int, rank: int,
               rotary_rows: bool) -> list[Slot]:
    path = module_path(layer, module)
    return [Slot(path, "A", (rank, fin)),
            Slot(path, "B", (fout, rank), rotary=rotary_rows and module in ROTARY_MODULES)]


def afm_text_v7() -> Layout:
    slots: list[Slot] = []
    for first, count, modules in AFM_V7["segments"]:
        for layer in range(first, first + count):
            for m in modules:
                fin, fout = AFM_V7_FEATURES[m]
                slots += _slots_for(layer, m, fin, fout, AFM_V7["rank"], True)
    return Layout(AFM_TEXT_V7, AFM_V7["rank"], tuple(slots), head_dim=AFM_V7["head_dim"],
                  shippable=True)


def stand_in_from_description(desc: dict, rank: int) -> Layout:
    """Rebuild a stand-in layout from the `layout` object a package's creatorDefined records."""
    slots: list[Slot] = []
    for layer in desc["layers"]:
        for m in MODULE_ORDER:
            if m in desc["modules"]:
                fin, fout = desc["modules"][m]
                slots += _slots_for(int(layer), m, int(fin), int(fout), rank, False)
    return Layout(STAND_IN, rank, tuple(slots))


def stand_in_from_adapter(shapes: dict[str, tuple[int, ...]], rank: int) -> Layout:
    """The stand-in's own module order, derived from the adapter's tensors.

    Rotary rows are never permuted here: nothing on a device runs a stand-in, so its package
    keeps the stand-in's own row order and converts back to PEFT unchanged. Every layer must
    carry the same module set, because the package records one shape per module name.
    Unknown keys are left for the caller's "extra module" check.
    """
    found: dict[int, dict[str, dict[str, tuple[int, ...]]]] = {}
    for key, shape in shapes.items():
        m = LORA_KEY_RE.match(key)
        if not m or m["module"] not in MODULE_PARENT or MODULE_PARENT[m["module"]] != m["parent"]:
            continue
        found.setdefault(int(m["layer"]), {}).setdefault(m["module"], {})[m["ab"]] = shape
    features: dict[str, tuple[int, int]] = {}
    for layer, mods in sorted(found.items()):
        for mod, ab in mods.items():
            if "A" in ab and "B" in ab and len(ab["A"]) == 2 and len(ab["B"]) == 2:
                feat = (int(ab["A"][1]), int(ab["B"][0]))
                features.setdefault(mod, feat)
    layers = sorted(found)
    desc = {"name": STAND_IN, "layers": layers,
            "modules": {m: list(features[m]) for m in MODULE_ORDER if m in features}}
    return stand_in_from_description(desc, rank)


def layout_for_architecture(architecture: str | None) -> str:
    return AFM_TEXT_V7 if architecture == AFM_ARCHITECTURE else STAND_IN


def stand_in_signature(identity: str) -> str:
    """A stand-in has no Apple signature; this one ties the package to the stand-in base."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:40]


# ---- transforms ----------------------------------------------------------------------------
def interleaved_to_half_split(head_dim: int) -> np.ndarray:
    """Row order within one head: even rows then odd rows.

    Interleaved (GPT-J) rotary pairs rows (2i, 2i+1); half-split (NeoX) pairs (i, i + d/2).
    Putting old row 2i at i and old row 2i+1 at i + d/2 turns each interleaved pair into the
    half-split pair with the same frequency.
    """
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def permute_rows(b: np.ndarray, head_dim: int, inverse: bool = False) -> np.ndarray:
    rows = b.shape[0]
    if rows % head_dim:
        raise ValueError(f"{rows} rows are not a whole number of {head_dim}-row heads")
    perm = interleaved_to_half_split(head_dim)
    if inverse:
        perm = np.argsort(perm)
    heads = b.reshape(rows // head_dim, head_dim, *b.shape[1:])
    return heads[:, perm].reshape(b.shape)
