"""The slot inventory: each domain's frequent decision-critical unknowns, built from the corpus.

The research defined coverage as "do the seven questions together cover the most
decision-critical unknowns of this task?". The gold's own asks are one view of that; this
inventory is the other: for each of the corpus's domains, the unknowns that the hand-written
reference answers of that domain keep asking about (dates, budget, who is involved, ...).

  python -m eval.judges.slots build     # rewrite judge/judges/slot_inventory.json
  python -m eval.judges.slots show      # print the slots per domain

How it is built (deterministic; no case is tuned by hand):
- every reference question title of a domain (data/corpus/references, never the ruler) is
  embedded with the bundled all-MiniLM-L6-v2;
- average-linkage agglomerative clustering on cosine distance, cut at SLOT_SIMILARITY (looser,
  in CUT_STEPS, for a domain that would otherwise have fewer than MIN_SLOTS slots);
- a cluster is a slot when questions of at least MIN_TASKS different reference tasks fall in it
  ("frequent"); its weight is the share of the domain's reference tasks that ask it, its
  exemplar the member closest to all the others (the medoid);
- each domain also gets the centroid of its task inputs (data/corpus/tasks), which routes a new
  task to its domain.
The file stores exemplar texts (any similarity backend can use them) and, for the model that
built it (its weights' SHA-256 is recorded), the slot and domain vectors as float16, so the
judge needs no embedding work at start-up with the bundled model.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

INVENTORY_PATH = Path(__file__).resolve().parent / "slot_inventory.json"
INVENTORY_FORMAT = "fmdistill-slot-inventory/1"
SLOT_SIMILARITY = 0.55   # members of one slot are at least this similar on average (cosine)
# A domain whose references phrase their common asks very differently may yield too few slots at
# that cut; it is then cut looser, step by step, down to the last value (recorded per domain).
CUT_STEPS = (0.55, 0.50, 0.45, 0.40)
MIN_SLOTS = 3
MIN_TASKS = 2            # a slot must be asked by this many different reference tasks
MAX_SLOTS = 12           # per domain, most frequent first (more than seven: tasks differ)
# Embeddings differ in their last bits between CPUs (kernel dispatch). Every discrete choice
# compares similarities on this grid and breaks what is left tied by text, so the inventory (part
# of the judge's identity) is the same whichever machine builds it.
SCORE_GRID = 1e-4


class InventoryError(ValueError):
    """The inventory file is missing or malformed; the message names the file and key."""


def _pack(vectors: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vectors, dtype="<f2").tobytes()).decode("ascii")


def _unpack(text: str, rows: int, dim: int, where: str) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text), dtype="<f2")
    if raw.size != rows * dim:
        raise InventoryError(f"{where}: expected {rows}x{dim} vector values, found {raw.size}")
    v = raw.astype(np.float32).reshape(rows, dim)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def _cosine_distances(vecs: np.ndarray) -> np.ndarray:
    """Condensed cosine distances on a SCORE_GRID grid, so last-bit differences vanish."""
    from scipy.spatial.distance import pdist
    return np.round(pdist(vecs.astype(np.float64), metric="cosine") / SCORE_GRID) * SCORE_GRID


def _medoid(idx: list[int], titles: list[str], vecs: np.ndarray) -> int:
    """The member closest to all others; near-ties (within SCORE_GRID) go to the first text.

    Members' mean similarities are often equal to 1e-6, a tie that raw floats would break by
    whichever last bit the CPU's kernels produced.
    """
    v = vecs[idx].astype(np.float64)
    mean_sim = (v @ v.T).mean(axis=1)
    near = [i for i, m in zip(idx, mean_sim) if m >= mean_sim.max() - SCORE_GRID]
    return min(near, key=lambda i: titles[i])


def cluster_domain(titles: list[str], task_ids: list[str], vecs: np.ndarray,
                   similarity: float = SLOT_SIMILARITY) -> list[dict]:
    """Frequent slots of one domain, most frequent first (ties: exemplar text)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    if len(titles) < 2:
        return []
    tree = linkage(_cosine_distances(vecs), method="average")
    labels = fcluster(tree, t=1.0 - similarity, criterion="distance")
    n_tasks = len(set(task_ids))
    slots = []
    for lab in sorted(set(labels)):
        idx = [i for i in range(len(titles)) if labels[i] == lab]
        tasks = sorted({task_ids[i] for i in idx})
        if len(tasks) < MIN_TASKS:
            continue
        medoid = _medoid(idx, titles, vecs)
        slots.append({"exemplar": titles[medoid], "weight": round(len(tasks) / n_tasks, 4),
                      "n_tasks": len(tasks),
                      "members": sorted(titles[i] for i in idx)})
    slots.sort(key=lambda s: (-s["n_tasks"], s["exemplar"]))
    return slots[:MAX_SLOTS]


def build_inventory(encoder=None) -> dict:
    """The inventory as a JSON-ready dict (see the module docstring)."""
    from data.corpus import pool_tasks, reference_cases
    from judge.judges.embedding import load_encoder
    enc = encoder or load_encoder()
    by_domain: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for case in reference_cases():
        domain = case.id.rsplit("-", 1)[0]
        for q in case.gold.questions:
            by_domain[domain].append((q.title, case.id))
    inputs: dict[str, list[str]] = defaultdict(list)
    for t in pool_tasks():
        inputs[t.domain or t.id.rsplit("-", 1)[0]].append(t.input)
    domains = {}
    for domain in sorted(by_domain):
        pairs = sorted(set(by_domain[domain]))
        titles = [p[0] for p in pairs]
        vecs = enc.encode(titles)
        for cut in CUT_STEPS:
            slots = cluster_domain(titles, [p[1] for p in pairs], vecs, cut)
            if len(slots) >= MIN_SLOTS:
                break
        centroid = enc.encode(sorted(inputs[domain])).mean(axis=0)
        domains[domain] = {"n_references": len({p[1] for p in pairs}), "slot_similarity": cut,
                           "n_tasks": len(inputs[domain]), "slots": slots,
                           "centroid": centroid / np.linalg.norm(centroid)}
    names = sorted(domains)
    slot_vecs = enc.encode([s["exemplar"] for d in names for s in domains[d]["slots"]])
    return {
        "format": INVENTORY_FORMAT,
        "built_with": {"model": enc.label, "weights_sha256": enc.sha256, "dim": enc.dim,
                       "slot_similarity": SLOT_SIMILARITY, "min_tasks": MIN_TASKS,
                       "max_slots": MAX_SLOTS},
        "domains": {d: {k: v for k, v in domains[d].items() if k != "centroid"} for d in names},
        "vectors": {"domain_centroids": _pack(np.stack([domains[d]["centroid"] for d in names])),
                    "slots": _pack(slot_vecs)},
    }


def write_inventory(inv: dict, path: Path = INVENTORY_PATH) -> None:
    """Atomic write: a crash never leaves a half-written inventory behind."""
    text = json.dumps(inv, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)   # mkstemp makes it private; the inventory is a committed data file
    os.replace(tmp, path)


class SlotInventory:
    """The loaded inventory: `task_slots(input, sim)` -> (exemplars, weights, slot vectors|None)."""

    def __init__(self, path: Path = INVENTORY_PATH):
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InventoryError(f"{path}: no slot inventory; run python -m eval.judges.slots "
                                 "build") from None
        except json.JSONDecodeError as e:
            raise InventoryError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        for key in ("format", "built_with", "domains", "vectors"):
            if key not in obj:
                raise InventoryError(f"{path}: missing key {key}")
        if obj["format"] != INVENTORY_FORMAT:
            raise InventoryError(f"{path}: format is {obj['format']!r}, expected "
                                 f"{INVENTORY_FORMAT!r}")
        self.path = path
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.built_with = obj["built_with"]
        self.domains = sorted(obj["domains"])
        self.slots = {d: obj["domains"][d]["slots"] for d in self.domains}
        dim = int(self.built_with["dim"])
        n_slots = sum(len(s) for s in self.slots.values())
        self._centroids = _unpack(obj["vectors"]["domain_centroids"], len(self.domains), dim,
                                  f"{path}: key vectors.domain_centroids")
        flat = _unpack(obj["vectors"]["slots"], n_slots, dim, f"{path}: key vectors.slots")
        self._slot_vecs, start = {}, 0
        for d in self.domains:
            self._slot_vecs[d] = flat[start:start + len(self.slots[d])]
            start += len(self.slots[d])
        self._domain_cache: dict[str, str] = {}
        self._inputs: dict[str, list[str]] | None = None

    def _native(self, sim) -> bool:
        """True when `sim` is the very model that built the stored vectors."""
        return getattr(sim, "weights_sha256", None) == self.built_with["weights_sha256"]

    def domain_of(self, task_input: str, sim) -> str:
        key = f"{sim.identity}|{task_input}"
        if key not in self._domain_cache:
            if self._native(sim):
                scores = self._centroids @ sim.vectors([task_input])[0]
            else:   # another backend: mean similarity to the domain's corpus task inputs
                inputs = self._corpus_inputs()
                scores = np.array([sim.matrix([task_input], inputs[d], frozenset()).mean()
                                   for d in self.domains])
            self._domain_cache[key] = self.domains[int(np.argmax(scores))]
        return self._domain_cache[key]

    def _corpus_inputs(self) -> dict[str, list[str]]:
        if self._inputs is None:
            from data.corpus import pool_tasks
            self._inputs = defaultdict(list)
            for t in pool_tasks():
                self._inputs[t.domain or t.id.rsplit("-", 1)[0]].append(t.input)
        return self._inputs

    def slot_matrix(self, task_input: str, asks: list[str], sim, background: frozenset
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarity of each slot of the task's domain to each ask, slot weights)."""
        d = self.domain_of(task_input, sim)
        slots = self.slots[d]
        weights = np.array([s["weight"] for s in slots], dtype=float)
        if not slots or not asks:
            return np.zeros((len(slots), len(asks))), weights
        if self._native(sim):
            m = np.clip(self._slot_vecs[d] @ sim.vectors(asks).T, 0.0, 1.0)
        else:
            m = sim.matrix([s["exemplar"] for s in slots], asks, background)
        return m, weights


_DEFAULT: SlotInventory | None = None


def default_inventory() -> SlotInventory:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SlotInventory()
    return _DEFAULT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.judges.slots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("build", "show"))
    p.add_argument("--out", type=Path, default=INVENTORY_PATH)
    args = p.parse_args(argv)
    if args.command == "build":
        inv = build_inventory()
        write_inventory(inv, args.out)
        n = sum(len(d["slots"]) for d in inv["domains"].values())
        print(f"wrote {args.out}: {n} slots over {len(inv['domains'])} domains "
              f"(model {inv['built_with']['model']}, sha256 "
              f"{inv['built_with']['weights_sha256'][:12]})")
        return 0
    inv = SlotInventory(args.out)
    for d in inv.domains:
        print(f"{d}:")
        for s in inv.slots[d]:
            print(f"  {s['weight']:.2f}  {s['exemplar']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
