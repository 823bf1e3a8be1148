"""The Claude judge of the reference protocol, through the shared client layer.

Per item and pass, Claude sees data.contract.JUDGE_SYSTEM_PROMPT and judge_user_message() and
must answer with the forced tool data.contract.JUDGE_TOOL. In the normal order SET A is the gold
and SET B the candidate, so "B" means the candidate is better; in the position-swapped pass
(candidate_first) "A" means the candidate is better.

- swap=True judges both orders; if the two pairwise verdicts disagree the case is a tie (the
  position bias cancels out) and the rubric scores of both passes are averaged.
- samples=K judges each order K times (the sample index is part of the cache key); rubric scores
  are averaged and the pairwise verdict is the strict majority (no strict majority -> tie).
- Valid verdicts are cached per (judge model, JUDGE_PROMPT_HASH, input, gold, candidate, order,
  sample), so re-scoring the same outputs sends no request. Malformed tool output (no tool call,
  missing fields, wrong types) is retried, then returned as an error string, never a score.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from data.anthropic_client import (DEFAULT_CACHE_PATH, DEFAULT_MODEL, ClaudeAPIError, ClaudeClient,
                                   forced_tool_request)
from data.api_retry import RetryPolicy
from data.concurrency import run_concurrently
from data.redaction import redact
from data.response_cache import ResponseCache, cache_key, canonical_json
from data.appendlog import rewrite_atomically
from data.contract import (
    JUDGE_PROMPT_HASH, JUDGE_SYSTEM_PROMPT, JUDGE_TOOL, RUBRIC_DIMENSIONS, DiscoveryResult,
    judge_user_message, spec_violations,
)
from judge.judges.base import JudgeItem
from judge.verdict import CANDIDATE_BETTER, GOLD_BETTER, TIE, Verdict, clamp_score

KIND = "judge"


def parse_verdict(tool_input) -> tuple[dict | None, str]:
    """(pass dict, "") for a well-formed record_verdict input, else (None, what is wrong)."""
    if not isinstance(tool_input, dict):
        return None, f"no {JUDGE_TOOL['name']} tool call"
    better = tool_input.get("better")
    if not isinstance(better, str) or better.strip().lower() not in ("a", "b", "tie"):
        return None, f"'better' must be A, B or tie, got {better!r}"
    better = {"a": "A", "b": "B", "tie": "tie"}[better.strip().lower()]
    rubric = {}
    for dim in RUBRIC_DIMENSIONS:
        v = tool_input.get(dim)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            return None, f"{dim!r} must be an integer 1..5, got {v!r}"
        rubric[dim] = clamp_score(int(v))
    notes = tool_input.get("notes")
    if not isinstance(notes, str):
        return None, f"'notes' must be a string, got {type(notes).__name__}"
    return {"better": better, "rubric": rubric, "notes": notes.strip()}, ""


def pairwise_for_candidate(better: str, candidate_first: bool) -> str:
    if better == "tie":
        return TIE
    candidate_letter = "A" if candidate_first else "B"
    return CANDIDATE_BETTER if better == candidate_letter else GOLD_BETTER


def combine_passes(passes: list[dict], judge_name: str) -> Verdict:
    """Passes carry sample, candidate_first, better, rubric, notes. See the module docstring."""
    by_sample: dict[int, list[dict]] = {}
    for p in sorted(passes, key=lambda p: (p["sample"], p["candidate_first"])):
        by_sample.setdefault(p["sample"], []).append(p)
    votes, rubrics, notes, disagreements = [], [], [], 0
    for sample_passes in by_sample.values():
        outcomes = {pairwise_for_candidate(p["better"], p["candidate_first"]) for p in sample_passes}
        if len(outcomes) > 1:
            disagreements += 1
        votes.append(outcomes.pop() if len(outcomes) == 1 else TIE)
        rubrics += [p["rubric"] for p in sample_passes]
        notes += [p["notes"] for p in sample_passes if p["notes"]]
    counts = Counter(votes).most_common()
    pairwise = counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else TIE
    rubric = {d: sum(r[d] for r in rubrics) / len(rubrics) for d in RUBRIC_DIMENSIONS}
    extra = {"passes": [{k: p[k] for k in ("sample", "candidate_first", "better", "rubric",
                                           "request_id", "cached") if k in p} for p in passes],
             "votes": votes, "swap_disagreements": disagreements}
    return Verdict(pairwise, rubric, notes[0] if notes else "", judge_name, extra)


def pass_key(model: str, item_input: str, gold: DiscoveryResult, candidate: DiscoveryResult,
             candidate_first: bool, sample: int) -> str:
    return cache_key(model, JUDGE_PROMPT_HASH, {
        "input": item_input, "gold": gold.to_dict("camel"),
        "candidate": candidate.to_dict("camel"), "candidate_first": candidate_first,
        "sample": sample})


class AnthropicJudge:
    def __init__(self, model: str = DEFAULT_MODEL, cache_path: str | Path | None = DEFAULT_CACHE_PATH,
                 concurrency: int = 4, swap: bool = False, samples: int = 1,
                 timeout: float = 120.0, max_retries: int = 6, max_attempts: int = 3,
                 retry_base_delay: float = 1.0, max_tokens: int = 1024, progress: bool = False,
                 client: ClaudeClient | None = None):
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.model, self.swap, self.samples = model, swap, samples
        self.concurrency, self.max_attempts, self.max_tokens = concurrency, max_attempts, max_tokens
        self.progress = progress
        self.name = f"anthropic:{model}"
        self.prompt_hash = JUDGE_PROMPT_HASH
        self.client = client or ClaudeClient(
            model=model, timeout=timeout, cache=cache_path,
            retry=RetryPolicy(max_retries=max_retries, base_delay=retry_base_delay))

    def _judge_pass(self, job: tuple[JudgeItem, bool, int]) -> dict | str:
        item, candidate_first, sample = job
        cache = self.client.cache
        key = pass_key(self.model, item.input, item.gold, item.candidate, candidate_first, sample)
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                self.client.meter.count_cache_hit()
                return {**hit, "sample": sample, "candidate_first": candidate_first, "cached": True}
        params = forced_tool_request(
            model=self.model, system=JUDGE_SYSTEM_PROMPT, tool=JUDGE_TOOL, max_tokens=self.max_tokens,
            messages=[{"role": "user", "content": judge_user_message(
                item.input, item.gold, item.candidate, candidate_first)}])
        problem = ""
        for _attempt in range(self.max_attempts):
            try:
                reply = self.client.call(params)        # malformed answers are never cached
            except ClaudeAPIError as e:
                return f"judge API error: {e}"
            parsed, problem = parse_verdict(reply.tool_input)
            if parsed is None and reply.stop_reason == "refusal":
                problem = f"the judge refused: {reply.refusal}"
            if parsed is not None:
                value = {**parsed, "request_id": reply.request_id, "usage": reply.usage,
                         "model": reply.model}
                if cache is not None:
                    cache.put(key, value, kind=KIND, model=self.model, prompt_hash=JUDGE_PROMPT_HASH,
                              meta={"input": item.input, "gold": item.gold.to_dict("camel"),
                                    "candidate": item.candidate.to_dict("camel"),
                                    "candidate_first": candidate_first, "sample": sample})
                return {**value, "sample": sample, "candidate_first": candidate_first,
                        "cached": False}
        return redact(f"judge returned a malformed verdict {self.max_attempts} times: {problem}")

    def judge_many(self, items: list[JudgeItem]) -> list[Verdict | str]:
        self.client.stopping.clear()
        orders = (False, True) if self.swap else (False,)
        jobs = [(i, (item, cf, s)) for i, item in enumerate(items) for cf in orders
                for s in range(self.samples)]
        passes: dict[int, list] = {i: [] for i in range(len(items))}
        bar = None
        if self.progress and jobs:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), desc="judge", unit="pass", dynamic_ncols=True)
        try:
            for (i, _job), result, exc in run_concurrently(
                    lambda j: self._judge_pass(j[1]), jobs, self.concurrency,
                    self.client.stopping):
                passes[i].append(redact(f"judge internal error: {exc!r}") if exc else result)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(self.client.meter.cost_text(), refresh=False)
        finally:
            if bar is not None:
                bar.close()
        out: list[Verdict | str] = []
        for i in range(len(items)):
            errors = [p for p in passes[i] if isinstance(p, str)]
            out.append(errors[0] if errors else combine_passes(passes[i], self.name))
        return out

    def close(self) -> None:
        self.client.close()


def export_records(cache_path: str | Path, out_path: str | Path, *, model: str | None = None,
                   prompt_hash: str | None = JUDGE_PROMPT_HASH) -> int:
    """Write every cached verdict as a judged record (interfaces.md format); returns the count.
    Passes of the same (judge model, input, gold, candidate) are combined as judge_many does."""
    cache = ResponseCache(cache_path)
    try:
        rows = cache.rows(KIND)
    finally:
        cache.close()
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if (model and row["model"] != model) or (prompt_hash and row["prompt_hash"] != prompt_hash):
            continue
        m = row["meta"]
        gkey = (row["model"], row["prompt_hash"], m["input"], canonical_json(m["gold"]),
                canonical_json(m["candidate"]))
        groups.setdefault(gkey, []).append({**row["value"], "sample": m["sample"],
                                            "candidate_first": m["candidate_first"]})
    records = []
    for (judge_model, _ph, item_input, gold_json, cand_json), passes in groups.items():
        candidate = DiscoveryResult.from_dict(json.loads(cand_json), exact_questions=None)
        violations = spec_violations(candidate)
        verdict = combine_passes(passes, f"anthropic:{judge_model}")
        records.append({"input": item_input, "gold": json.loads(gold_json),
                        "candidate": json.loads(cand_json),
                        "spec": {"passed": not violations, "violations": violations},
                        "verdict": {"pairwise": verdict.pairwise, "rubric": verdict.rubric,
                                    "notes": verdict.notes, "judge": verdict.judge}})
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    rewrite_atomically(out_path, records)
    return len(records)
