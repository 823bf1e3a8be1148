"""On-policy drafts for preference pairs: samples from the current student, or drafts from a file.

The published on-policy pairs (gold vs the model's own weaker draft) recovered ORPO from 0.33 to
0.40, so the student's own mistakes are the rejections that matter most. Two sources:

- sampling: base + SFT adapter, N samples per task at a temperature, through the same prompt and
  chat template as training (eval.generate). Samples go to an append-only log keyed by everything
  that determines them (base, adapter bytes, N, temperature, top-p, token budget, seed, prompt),
  so an interrupted run resumes where it stopped and a rerun samples nothing. Tasks are sampled in
  fixed chunks, each seeded from the run seed and its first task, so a resumed run gives the same
  samples as an uninterrupted one.
- drafts files: JSONL of {"input", "candidate"} (or "text"), e.g. written on a Mac by a harness
  around the on-device model. "candidate" may be the raw output text or a contract object.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from data.appendlog import AppendLog, read_records
from data.contract import PROMPT_HASH, ContractError, DiscoveryResult, read_jsonl
from data.leak import normalize_input


@dataclass(frozen=True)
class StudentSpec:
    base: str                       # hub id, local folder, Apple assets folder or an alias
    adapter: str | None = None      # PEFT adapter / training run folder
    n: int = 4                      # samples per task
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 640
    batch_size: int = 8             # tasks per generate call (each yields n sequences)
    seed: int = 0
    engine: str = "torch"           # torch | mlx: different random streams, so different samples
    guided: bool = False            # sampled under the contract's schema (train.guided)

    def key(self) -> str:
        """Identity of the samples: changing any of these makes new samples."""
        from train.common import file_sha256
        adapter_sha = None
        if self.adapter:
            adapter_sha = file_sha256(Path(self.adapter) / "adapter_model.safetensors")
        ident = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        if self.engine == "torch":
            del ident["engine"]     # keys from before the MLX engine stay valid
        if not self.guided:
            del ident["guided"]     # and those from before guided sampling
        ident.update(adapter_sha256=adapter_sha, prompt_hash=PROMPT_HASH)
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def provenance(self) -> dict:
        out = {"student_base": self.base, "student_adapter": self.adapter,
               "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
               "engine": self.engine, "guided": self.guided}
        if self.adapter and (Path(self.adapter) / "run.json").exists():
            run = json.loads((Path(self.adapter) / "run.json").read_text(encoding="utf-8"))
            out["student_run_id"] = run.get("run_id")
        return out


def resolve_student(base: str | None, adapter: str | None, **kw) -> StudentSpec | None:
    """A StudentSpec, or None when no student was asked for. The base defaults to the one the
    adapter's run.json names, so `--student-adapter runs/sft-tiny` is enough."""
    if not base and not adapter:
        return None
    if adapter:
        a = Path(adapter)
        if not (a / "adapter_config.json").exists():
            raise FileNotFoundError(f"--student-adapter {adapter}: not a PEFT adapter folder "
                                    "(adapter_config.json is missing)")
        if not base:
            run_json = a / "run.json"
            if not run_json.exists():
                raise FileNotFoundError(f"--student-adapter {adapter} has no run.json naming its "
                                        "base; pass --student-base as well")
            base = json.loads(run_json.read_text(encoding="utf-8"))["base_model"]["name_or_path"]
    return StudentSpec(base=base, adapter=adapter, **kw)


def _chunk_seed(seed: int, first_input: str) -> int:
    return int(hashlib.sha256(f"{seed}|{first_input}".encode()).hexdigest()[:8], 16)


def sample_student(inputs: list[str], spec: StudentSpec, log_path: Path,
                   progress: bool = True) -> dict[str, list[tuple[int, str]]]:
    """{normalized input: [(sample index, raw text), ...]} for every input, sampling only what the
    log at `log_path` does not already hold for this spec."""
    key = spec.key()
    have: dict[str, dict[int, str]] = {}   # a later line for the same sample wins
    for _, rec in read_records(log_path):
        if isinstance(rec, dict) and rec.get("key") == key:
            have.setdefault(normalize_input(rec["input"]), {})[int(rec["sample_index"])] = \
                rec["text"]
    chunks = [inputs[i:i + spec.batch_size] for i in range(0, len(inputs), spec.batch_size)]
    todo = [c for c in chunks if any(normalize_input(t) not in have for t in c)]
    if todo:
        import contextlib

        from tqdm.auto import tqdm

        from eval.generate import generate_texts, render_prompt
        from train.models import load_with_adapter, pick_device, pick_precision

        if spec.engine == "mlx":
            from train.mlx.generate import load_mlx_engine
            model, tokenizer, _ = load_mlx_engine(spec.base, spec.adapter)
            no_grad = contextlib.nullcontext()
        else:
            import torch
            device = pick_device("auto")
            model, tokenizer, _ = load_with_adapter(spec.base, spec.adapter, device=device,
                                                    precision=pick_precision(device, "auto"))
            no_grad = torch.inference_mode()
        with AppendLog(log_path) as log, no_grad:
            for chunk in tqdm(todo, desc="sampling the student", disable=not progress,
                              mininterval=2.0):
                texts = generate_texts(
                    model, tokenizer, [render_prompt(tokenizer, t) for t in chunk],
                    max_new_tokens=spec.max_new_tokens, batch_size=len(chunk), do_sample=True,
                    temperature=spec.temperature, top_p=spec.top_p,
                    num_return_sequences=spec.n, seed=_chunk_seed(spec.seed, chunk[0]),
                    guided=spec.guided)
                for task_input, samples in zip(chunk, texts):
                    norm = normalize_input(task_input)
                    have[norm] = {}
                    for i, text in enumerate(samples):
                        log.append({"key": key, "input": task_input, "sample_index": i,
                                    "text": text})
                        have[norm][i] = text
        del model
    return {normalize_input(t): sorted(have.get(normalize_input(t), {}).items()) for t in inputs}


def read_drafts(path: Path) -> list[tuple[str, str, str | DiscoveryResult]]:
    """(where, input, text or contract object) per line of a drafts file."""
    out = []
    for where, obj in read_jsonl(path, what="draft"):
        if not isinstance(obj, dict) or not isinstance(obj.get("input"), str) \
                or not obj["input"].strip():
            raise ContractError(f"{where}: a draft needs a non-empty string 'input'")
        cand = obj.get("candidate", obj.get("text"))
        if isinstance(cand, dict):
            cand = DiscoveryResult.from_dict(cand, where=f"{where}: key 'candidate'",
                                             exact_questions=None)
        elif not isinstance(cand, str):
            raise ContractError(f"{where}: a draft needs 'candidate' (output text or contract "
                                "object) or 'text'")
        out.append((where, obj["input"], cand))
    return out
