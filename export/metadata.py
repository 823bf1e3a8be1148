"""metadata.json: the toolkit's keys and serialisation, the identifier rule, and provenance.

`creatorDefined` is readable by any app that loads the adapter, so what goes in it is filtered:
no value that looks like a local path and no value containing a secret from the environment
(ANTHROPIC_API_KEY and any other *KEY / *TOKEN / *SECRET / *PASSWORD variable) ever reaches it.
Dropped entries are reported by key, never by value.

What the user types (--author, --description, --license and every --creator-defined key and
value) is refused outright (`user_text_problem`, exit 2), naming the flag and key, never the value,
when it holds a secret-looking value: an Anthropic-shaped key, the value of ANTHROPIC_API_KEY or
any *KEY / *TOKEN / *SECRET / *PASSWORD variable with or without its known prefix (sk-ant-, sk-,
ghp_, hf_, ...) or a long part of it, or a high-entropy token (20+ characters mixing lower and
upper case and digits, switching class at almost every other character, Shannon entropy >= 3.5
bits per character; hex digests and CamelCase names pass); or an absolute path into a home
folder.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

NAME_RE = re.compile(r"^\w+$", re.ASCII)
SIGNATURE_RE = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_AUTHOR = "3P developer"
DRAFT_TOKEN_COUNT = 5
# metadata.json is a few KiB as the toolkit writes it; anything near this is not metadata (a 50 MB
# description once read as "valid" and took 236 MB of memory). Nesting: ours is 4 deep.
MAX_METADATA_BYTES = 1 << 20
MAX_METADATA_DEPTH = 32
METADATA_TYPES = {
    "adapterIdentifier": str, "author": str, "baseModelSignature": str, "creatorDefined": dict,
    "description": str, "license": str, "loraRank": int, "speculativeDecodingDraftTokenCount": int,
}
# Keys the exporter writes into creatorDefined itself; --creator-defined may not override them,
# so a package can never claim to be something other than what it was made from.
PROVENANCE_KEYS = ("producer", "layout", "standIn", "runId", "stage", "trainSha256", "valSha256",
                   "promptHash", "baseIdentity", "baseArchitecture", "trainingRopeLayout",
                   "trainingLoraAlpha", "trainingLoraScale", "ruler", "promptSource")
PRODUCER = "fmdistill export.fmadapter"

_SECRET_NAME_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
_SECRET_SHAPE_RE = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def adapter_identifier(name: str, signature: str) -> str:
    return f"fmadapter-{name}-{signature[:7]}"


def serialize(metadata: dict) -> bytes:
    """As the toolkit writes it: sorted keys, 4-space indent, non-ASCII kept, no final newline."""
    return json.dumps(metadata, sort_keys=True, indent=4, ensure_ascii=False).encode("utf-8")


def build(name: str, signature: str, rank: int, *, author: str = DEFAULT_AUTHOR,
          description: str = "", license: str = "", creator_defined: dict | None = None) -> dict:
    return {
        "adapterIdentifier": adapter_identifier(name, signature),
        "author": author,
        "baseModelSignature": signature,
        "creatorDefined": creator_defined or {},
        "description": description,
        "license": license,
        "loraRank": int(rank),
        "speculativeDecodingDraftTokenCount": DRAFT_TOKEN_COUNT,
    }


# ---- secrets and paths ---------------------------------------------------------------------
def secret_values() -> list[str]:
    """Values of secret-looking environment variables (long enough to be real secrets)."""
    out = []
    for k, v in os.environ.items():
        if v and len(v) >= 8 and (k == "ANTHROPIC_API_KEY" or _SECRET_NAME_RE.search(k)):
            out.append(v)
    return out


_KNOWN_PREFIXES = ("sk-ant-api03-", "sk-ant-admin01-", "sk-ant-", "sk-proj-", "sk-", "ghp_",
                   "gho_", "ghs_", "github_pat_", "hf_", "xoxb-", "xoxp-", "glpat-", "AKIA")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]{20,}")
_HOME_RE = re.compile(r"(?:^|[\s\"'=:(])(?:~[/\\]|/home/|/Users/|/root(?:/|$)|"
                      r"[A-Za-z]:\\Users\\)")


def _secret_parts(secret: str) -> set[str]:
    """The secret, the secret without each known prefix, and its long pieces: a value pasted
    without its 'sk-ant-' is still the secret."""
    parts = {secret}
    for pre in _KNOWN_PREFIXES:
        if secret.startswith(pre) and len(secret) - len(pre) >= 8:
            parts.add(secret[len(pre):])
    parts |= {piece for piece in re.split(r"[-_.]", secret) if len(piece) >= 10}
    return parts


def _entropy(text: str) -> float:
    from collections import Counter
    from math import log2
    return -sum(c / len(text) * log2(c / len(text)) for c in Counter(text).values())


def high_entropy_token(text: str) -> bool:
    """A long random-looking token (API keys, access tokens); hex digests are not flagged."""
    for tok in _TOKEN_RE.findall(text):
        if re.fullmatch(r"[0-9a-fA-F\-]+", tok):
            continue
        classes = [0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else 3
                   for c in tok]
        # Random keys mix lower, upper and digits and switch between them at about every other
        # character; words, CamelCase names and paths switch rarely.
        switches = sum(a != b for a, b in zip(classes, classes[1:])) / (len(tok) - 1)
        if {0, 1, 2} <= set(classes) and switches >= 0.45 and _entropy(tok) >= 3.5:
            return True
    return False


def home_path(text: str) -> bool:
    home = str(Path.home())
    return (len(home) > 1 and home in text) or bool(_HOME_RE.search(text))


def user_text_problem(text: str, secrets: list[str] | None = None) -> str | None:
    """Why a user-supplied metadata text must not be published, or None. Never quotes it."""
    secrets = secret_values() if secrets is None else secrets
    if _SECRET_SHAPE_RE.search(text) or any(p in text for s in secrets
                                            for p in _secret_parts(s)):
        return "contains a secret from the environment (or a key-shaped value)"
    if high_entropy_token(text):
        return "contains what looks like a secret (a long random token)"
    if home_path(text):
        return "contains an absolute path into a home folder"
    return None


def user_creator_problems(value, where: str = "", secrets: list[str] | None = None) -> list[str]:
    """`where: problem` for every key or text of --creator-defined that must not be published."""
    secrets = secret_values() if secrets is None else secrets
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{where}.{k}" if where else str(k)
            why = user_text_problem(str(k), secrets)
            if why:
                out.append(f"a key under {where or 'the top level'}: {why}")
            out += user_creator_problems(v, here if not why else f"{where}.<key>", secrets)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out += user_creator_problems(v, f"{where}[{i}]", secrets)
    elif isinstance(value, str):
        why = user_text_problem(value, secrets)
        if why:
            out.append(f"{where}: {why}")
    return out


def contains_secret(text: str, secrets: list[str] | None = None) -> bool:
    secrets = secret_values() if secrets is None else secrets
    return bool(_SECRET_SHAPE_RE.search(text)) or any(s in text for s in secrets)


def looks_like_path(text: str) -> bool:
    """True for anything that might reveal the local file system (URLs are allowed)."""
    t = text.strip()
    if t.lower().startswith("file:"):
        return True
    if _URL_RE.match(t):
        return False
    if t.startswith(("/", "~", "./", "../", ".\\", "..\\")) or re.match(r"^[A-Za-z]:[\\/]", t):
        return True
    if "/" in t or "\\" in t:
        return True
    home, cwd = str(Path.home()), os.getcwd()
    return (len(home) > 1 and home in t) or (len(cwd) > 1 and cwd in t)


def scrub(value, where: str, dropped: list[str], secrets: list[str]):
    """A copy of `value` without path-like or secret-bearing strings; dropped keys are listed."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            k = str(k)
            here = f"{where}.{k}" if where else k
            if looks_like_path(k) or contains_secret(k, secrets):
                dropped.append(f"{where}.<key>" if where else "<key>")
                continue
            cleaned = scrub(v, here, dropped, secrets)
            if cleaned is not _DROP:
                out[k] = cleaned
        return out
    if isinstance(value, (list, tuple)):
        items = [scrub(v, f"{where}[{i}]", dropped, secrets) for i, v in enumerate(value)]
        return [v for v in items if v is not _DROP]
    if isinstance(value, str):
        if looks_like_path(value) or contains_secret(value, secrets):
            dropped.append(where)
            return _DROP
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    dropped.append(where)  # anything else is not JSON we chose to publish
    return _DROP


_DROP = object()


def provenance(run: dict, *, layout_description, stand_in: bool, lora_alpha: float,
               lora_scale: float) -> dict:
    """What a package says about where it came from: ids and hashes, never paths."""
    base = run.get("base_model") or {}
    data = run.get("data") or {}
    out = {
        "producer": PRODUCER,
        "layout": layout_description,
        "standIn": bool(stand_in),
        "runId": run.get("run_id"),
        "stage": run.get("stage"),
        "trainSha256": data.get("train_sha256"),
        "valSha256": data.get("val_sha256"),
        "promptHash": run.get("prompt_hash"),
        "baseIdentity": base.get("identity"),
        "baseArchitecture": base.get("architecture"),
        "trainingRopeLayout": base.get("rope_layout"),
        "trainingLoraAlpha": lora_alpha,
        "trainingLoraScale": lora_scale,
    }
    if (data.get("prompt") or {}).get("source") == "training data":
        # The app must send the instructions the adapter learned (written beside the package).
        out["promptSource"] = "training data"
    ruler = (run.get("metrics") or {}).get("ruler")
    if isinstance(ruler, (int, float)) and not isinstance(ruler, bool):
        out["ruler"] = {"score": ruler}
    elif isinstance(ruler, dict):
        out["ruler"] = {k: v for k, v in ruler.items()
                        if isinstance(v, (int, float, str, bool)) or v is None}
    return {k: v for k, v in out.items() if v is not None}


def creator_defined(run: dict, user: dict | None, **prov) -> tuple[dict, list[str]]:
    """Provenance plus the user's extra keys, scrubbed. Returns (object, dropped key paths)."""
    merged = provenance(run, **prov)
    for k, v in (user or {}).items():
        if k in PROVENANCE_KEYS:
            raise ValueError(f"--creator-defined: key {k!r} is reserved for the exporter's "
                             f"provenance ({', '.join(PROVENANCE_KEYS)}); choose another name")
        merged[k] = v
    dropped: list[str] = []
    return scrub(merged, "", dropped, secret_values()), dropped


def check(metadata: dict) -> list[str]:
    """Problems with a metadata object's keys and types (empty when it is as the toolkit writes)."""
    problems = []
    for key, typ in METADATA_TYPES.items():
        if key not in metadata:
            problems.append(f"metadata.json: missing key {key!r}")
        elif not isinstance(metadata[key], typ) or (typ is int and isinstance(metadata[key], bool)):
            problems.append(f"metadata.json: {key!r} should be {typ.__name__}, got "
                            f"{type(metadata[key]).__name__}")
    for key in sorted(set(metadata) - set(METADATA_TYPES)):
        problems.append(f"metadata.json: unexpected key {key!r} (the toolkit writes only "
                        f"{', '.join(sorted(METADATA_TYPES))})")
    sig = metadata.get("baseModelSignature")
    if isinstance(sig, str) and not SIGNATURE_RE.match(sig):
        problems.append(f"metadata.json: baseModelSignature {sig!r} is not 40 lowercase hex digits")
    return problems
