"""The learned offline judge: small linear models on frozen features, fitted on real verdicts.

Per rubric dimension a ridge regression from standardised features (judge.features) to the real
judge's 1..5 score; for the pairwise verdict an L2-regularised multinomial logistic regression
over the classes seen in training. Both are closed-form or convex fits with no randomness, so the
same records give the same weights, bit for bit.

A fitted judge is a folder:
    weights.safetensors   x_mean, x_scale, rubric_coef [5, F], rubric_intercept [5],
                          pairwise_coef [K, F], pairwise_intercept [K]   (float64)
    config.json           format, feature names and groups, classes, regularisation, the
                          similarity backend's identity, training-data hash, identity
    manifest.json         one row per training record: experiment, case_id, candidate_sha256
Identity = sha256(weights file sha256 + ":" + training-data hash); the judge's name is
"learned@<first 12 hex>", recorded with every verdict.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from data.contract import RUBRIC_DIMENSIONS
from data.contract.inputs import InputError, read_json
from judge.judges.base import JudgeItem
from judge.records import JudgedRecord
from judge.verdict import CANDIDATE_BETTER, GOLD_BETTER, TIE, Verdict
from judge.features import DEFAULT_GROUPS, case_features, offline_judges, prefetch

FORMAT = "fmdistill-learned-judge/1"
CLASSES = (GOLD_BETTER, TIE, CANDIDATE_BETTER)
WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE = "weights.safetensors", "config.json", "manifest.json"
DEFAULT_ALPHA = 30.0    # ridge strength on standardised features (chosen leave-one-experiment-out)
DEFAULT_C = 0.05        # inverse L2 strength of the pairwise logistic model (same)


class LearnedJudgeError(ValueError):
    """A learned-judge folder or its training input is unusable; the message says which."""


def canonical_sha256(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def trainable(records: list[JudgedRecord]) -> list[JudgedRecord]:
    """Records a verdict can be learned from: a verdict, a gold, a candidate, no error."""
    return [r for r in records if r.verdict is not None and r.gold is not None
            and r.candidate is not None and not r.errored]


def manifest_rows(records: list[JudgedRecord]) -> list[dict]:
    return [{"experiment": r.experiment, "case_id": r.case_id,
             "candidate_sha256": canonical_sha256(r.candidate.to_dict("camel")),
             "verdict_sha256": canonical_sha256({"pairwise": r.verdict.pairwise,
                                                 "rubric": r.verdict.rubric})}
            for r in records]


@dataclass
class Model:
    feature_names: list[str]
    groups: list[str]
    classes: list[str]
    x_mean: np.ndarray
    x_scale: np.ndarray
    rubric_coef: np.ndarray          # [5, F]
    rubric_intercept: np.ndarray     # [5]
    pairwise_coef: np.ndarray        # [K, F]
    pairwise_intercept: np.ndarray   # [K]
    alpha: float
    c: float

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.x_mean) / self.x_scale

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rubric [N, 5] clipped to 1..5, class probabilities [N, K])."""
        z = self.standardise(np.atleast_2d(x))
        rubric = np.clip(z @ self.rubric_coef.T + self.rubric_intercept, 1.0, 5.0)
        logits = z @ self.pairwise_coef.T + self.pairwise_intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return rubric, p / p.sum(axis=1, keepdims=True)


def fit_ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    mu = float(y.mean())
    a = z.T @ z + alpha * np.eye(z.shape[1])
    return np.linalg.solve(a, z.T @ (y - mu)), mu


def fit_softmax(z: np.ndarray, labels: np.ndarray, k: int, c: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, L2 penalty 1/(2C)·|W|² on the weights (not the bias)."""
    n, f = z.shape
    onehot = np.eye(k)[labels]

    def loss(theta):
        w, b = theta[:k * f].reshape(k, f), theta[k * f:]
        logits = z @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        val = -(onehot * logp).sum() / n + (w * w).sum() / (2 * c * n)
        g = (p - onehot) / n
        return val, np.concatenate([(g.T @ z + w / (c * n)).ravel(), g.sum(axis=0)])

    res = minimize(loss, np.zeros(k * f + k), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-9})
    return res.x[:k * f].reshape(k, f), res.x[k * f:]


def fit_model(x: np.ndarray, rubric: np.ndarray, labels: list[str], feature_names: list[str],
              groups, *, alpha: float = DEFAULT_ALPHA, c: float = DEFAULT_C) -> Model:
    if len(x) < 2:
        raise LearnedJudgeError(f"only {len(x)} trainable record(s); need at least 2")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0          # a constant feature carries nothing; keep it at zero
    z = (x - mean) / scale
    coef, icpt = zip(*(fit_ridge(z, rubric[:, j], alpha) for j in range(rubric.shape[1])))
    classes = [cl for cl in CLASSES if cl in set(labels)]
    if len(classes) == 1:              # one class seen: predict it always
        pw_coef, pw_icpt = np.zeros((1, x.shape[1])), np.zeros(1)
    else:
        idx = np.array([classes.index(l) for l in labels])
        pw_coef, pw_icpt = fit_softmax(z, idx, len(classes), c)
    return Model(list(feature_names), list(groups), classes, mean, scale, np.array(coef),
                 np.array(icpt), pw_coef, pw_icpt, float(alpha), float(c))


def features_matrix(triples, sim, groups=DEFAULT_GROUPS) -> tuple[np.ndarray, list[str]]:
    """Feature rows for (input, gold, candidate) triples, and the feature names."""
    triples = list(triples)
    prefetch(sim, triples)
    cache: dict = {}
    rows = [case_features(i, g, c, sim, groups, cache) for i, g, c in triples]
    names = list(rows[0]) if rows else []
    return np.array([[r[k] for k in names] for r in rows], dtype=float), names


def targets(records: list[JudgedRecord]) -> tuple[np.ndarray, list[str]]:
    return (np.array([[r.verdict.rubric[d] for d in RUBRIC_DIMENSIONS] for r in records]),
            [r.verdict.pairwise for r in records])


def train(records: list[JudgedRecord], sim, *, groups=DEFAULT_GROUPS, alpha: float = DEFAULT_ALPHA,
          c: float = DEFAULT_C) -> tuple[Model, list[dict]]:
    use = trainable(records)
    if len(use) < 2:
        raise LearnedJudgeError(f"only {len(use)} trainable record(s) of {len(records)} (a "
                                "verdict, a gold, a candidate and no error); need at least 2")
    x, names = features_matrix(((r.input, r.gold, r.candidate) for r in use), sim, groups)
    y, labels = targets(use)
    return fit_model(x, y, labels, names, groups, alpha=alpha, c=c), manifest_rows(use)


# ---- save / load ---------------------------------------------------------------------------
def save(model: Model, manifest: list[dict], folder, similarity_identity: str) -> str:
    """Write the judge folder; returns its name (learned@<12 hex>)."""
    from safetensors.numpy import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(getattr(model, k), dtype=np.float64) for k in (
        "x_mean", "x_scale", "rubric_coef", "rubric_intercept", "pairwise_coef",
        "pairwise_intercept")}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    w_sha = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    data_sha = canonical_sha256(manifest)
    judges = ({b: j.name for b, j in offline_judges().items()} if "judges" in model.groups
              else {})
    identity = hashlib.sha256(f"{w_sha}:{data_sha}:{canonical_sha256(judges)}".encode()
                              ).hexdigest()
    config = {"format": FORMAT, "feature_names": model.feature_names, "groups": model.groups,
              "classes": model.classes, "rubric_dimensions": list(RUBRIC_DIMENSIONS),
              "alpha": model.alpha, "c": model.c, "similarity": similarity_identity,
              "weights_sha256": w_sha, "training_data_sha256": data_sha,
              "n_train": len(manifest), "identity": identity,
              # The "judges" group reads the offline judges' outputs: their identities matter.
              "feature_judges": judges}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return f"learned@{identity[:12]}"


def check_folder(folder) -> dict:
    """The config of a fitted judge folder, after checking it is one (config and weights present,
    this format, weights matching their recorded sha256); LearnedJudgeError otherwise. Cheap: no
    model is loaded, so command lines check --judge learned:DIR before anything runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LearnedJudgeError(f"{folder}: no such folder; train one with python -m judge.learn "
                                f"--records FILE --out {folder}")
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise LearnedJudgeError(f"{p}: missing; train one with python -m judge.learn")
    try:
        cfg = read_json(cfg_path, what="learned-judge config")
    except InputError as e:
        raise LearnedJudgeError(str(e)) from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise LearnedJudgeError(f"{cfg_path}: key 'format' must be {FORMAT!r}")
    w_sha = hashlib.sha256(w_path.read_bytes()).hexdigest()
    if w_sha != cfg.get("weights_sha256"):
        raise LearnedJudgeError(f"{cfg_path}: key 'weights_sha256' does not match "
                                f"{w_path.name} (the folder was edited or mixed)")
    return cfg


def load(folder) -> tuple[Model, dict]:
    from safetensors.numpy import load_file
    folder = Path(folder)
    cfg = check_folder(folder)
    w_path = folder / WEIGHTS_FILE
    t = load_file(str(w_path))
    f = len(cfg["feature_names"])
    if t["x_mean"].shape != (f,) or t["rubric_coef"].shape != (len(RUBRIC_DIMENSIONS), f):
        raise LearnedJudgeError(f"{w_path}: tensor shapes do not match {f} features")
    model = Model(cfg["feature_names"], cfg["groups"], cfg["classes"], t["x_mean"],
                  t["x_scale"], t["rubric_coef"], t["rubric_intercept"], t["pairwise_coef"],
                  t["pairwise_intercept"], cfg["alpha"], cfg["c"])
    return model, cfg


def verdicts_from(model: Model, x: np.ndarray, name: str) -> list[Verdict]:
    rubric, prob = model.predict(x)
    out = []
    for r, p in zip(rubric, prob):
        k = int(np.argmax(p))
        scores = {d: round(float(v), 3) for d, v in zip(RUBRIC_DIMENSIONS, r)}
        weakest = min(scores, key=scores.get)
        out.append(Verdict(model.classes[k], scores,
                           f"learned judge: weakest {weakest} ({scores[weakest]:.2f}); "
                           f"p({model.classes[k]}) {p[k]:.2f}", name,
                           {"probabilities": {c: round(float(v), 4)
                                              for c, v in zip(model.classes, p)}}))
    return out


class LearnedJudge:
    """get_judge-compatible: `judge_many(items)` -> Verdicts. Loads a judge.learn folder."""

    def __init__(self, folder, sim=None):
        self.model, self.config = load(folder)
        if sim is None:
            from judge.judges.offline_features import EmbeddingSimilarity
            sim = EmbeddingSimilarity()
        if sim.identity != self.config["similarity"]:
            raise LearnedJudgeError(
                f"{Path(folder) / CONFIG_FILE}: fitted with similarity "
                f"{self.config['similarity']!r}, but this machine gives {sim.identity!r}")
        self.sim = sim
        self.folder = str(folder)
        self.prompt_hash = self.config["identity"]
        self.name = f"learned@{self.prompt_hash[:12]}"

    def judge_many(self, items: list[JudgeItem]) -> list[Verdict | str]:
        if not items:
            return []
        x, names = features_matrix(((i.input, i.gold, i.candidate) for i in items), self.sim,
                                   self.model.groups)
        if names != self.model.feature_names:
            raise LearnedJudgeError(f"{self.folder}: the fitted feature list differs from this "
                                    "code's features; retrain with python -m judge.learn")
        return verdicts_from(self.model, x, self.name)
