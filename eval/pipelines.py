"""Candidate-generation pipelines, selected by name: `single`, `overgen-prune`, `retrieval`.

Every pipeline uses the contract's system prompt and user message (data.contract) and greedy,
batched generation (eval.generate), so a run is repeatable bit for bit.

- single: one greedy call per case.
- overgen-prune: the prompt asks for 8 questions; a deterministic scorer then drops the weakest
  one (redundant with the others, generic filler, a compound ask, not grounded in the task) —
  the trick behind the best published result. An answer with 7 or fewer questions is kept as
  generated (never padded); the spec gate judges it.
- retrieval: the k pool examples nearest to the task (stemmed content-word overlap, the leak
  guard's normalisation) are shown as user/assistant demonstrations before the task. Leave-one-out
  holds by construction: `choose_demonstrations` removes, before ranking, every pool item the
  training leak guard would flag against the case (data.leak.LeakGuard: a near-equal input after
  Unicode folding, an input containing the case's task, a semantic paraphrase, or — when the
  case's gold is known, as it is for ruler inputs — an answer repeating that gold), and
  `retrieval_messages` refuses to build a prompt that would show such an item anyway. A case is
  never shown its own gold, even when the pool contains the ruler itself.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from data.contract import (N_QUESTIONS, Case, ContractError, DiscoveryResult, PromptTemplate,
                           case_from_dict,
                           load_cases, parse_assistant, planner_messages, planner_user_message,
                           read_jsonl, render_assistant)
from data.corpus import ruler_cases
from data.leak import LeakGuard, content_words, normalize_input
from eval.generate import Generation, generate_from_prompts, render_messages

PIPELINES = ("single", "overgen-prune", "retrieval")
OVERGEN_QUESTIONS = N_QUESTIONS + 1
DEFAULT_K = 3


class LeaveOneOutError(RuntimeError):
    """A demonstration would have shown a case its own (or a near-identical) task."""


@dataclass
class PipelineOptions:
    max_new_tokens: int = 640
    batch_size: int = 16
    k: int = DEFAULT_K                      # retrieval: demonstrations per case (at most)
    pool: list[Case] | None = None          # retrieval: None = the bundled reference answers
    pool_source: str = "bundled reference answers"
    progress: bool = False
    template: PromptTemplate | None = None  # the adapter's own prompt (eval.run_prompt); single only
    field_map: dict | None = None           # its answers' key names, beyond the known aliases
    guided: bool = False                    # decode under the contract's schema (train.guided)

    def describe(self, name: str) -> dict:
        """What decides the candidates (recorded with the experiment and hashed into its config)."""
        d = {"pipeline": name, "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}
        if self.guided:   # only then, so unguided experiments keep their hashes
            from train.guided import GRAMMAR_LIBRARY, JSON_OPTIONS
            d["guided"] = {"schema": "data.contract.json_schema", "library": GRAMMAR_LIBRARY,
                           "whitespace": JSON_OPTIONS["whitespace_pattern"]}
        if self.template is not None:
            d["prompt_template_sha256"] = self.template.sha256
        if self.field_map:
            d["field_map"] = dict(self.field_map)
        if name == "overgen-prune":
            d["overgen_questions"] = OVERGEN_QUESTIONS
        if name == "retrieval":
            d.update(k=self.k, pool=self.pool_source,
                     pool_size=len(self.pool) if self.pool is not None else None,
                     pool_sha256=pool_hash(self.pool) if self.pool is not None else None)
        return d


def pool_hash(pool: list[Case]) -> str:
    """Content hash of a retrieval pool (inputs and answers), so an edited pool file shows."""
    import hashlib
    import json
    h = hashlib.sha256()
    for c in pool:
        h.update(json.dumps([c.id, c.input, c.gold.to_dict()], sort_keys=True).encode())
    return h.hexdigest()


# ---- the retrieval pool ------------------------------------------------------------------------
def _sft_row_case(obj: dict, where: str) -> Case:
    """A TRL prompt/completion row (python -m data.sft) as a case: user turn + assistant answer."""
    user = [m.get("content", "") for m in obj.get("prompt", []) if m.get("role") == "user"]
    answer = [m.get("content", "") for m in obj.get("completion", [])
              if m.get("role") == "assistant"]
    if not user or not answer:
        raise ContractError(f"{where}: a prompt/completion row needs a user turn in 'prompt' and "
                            "an assistant turn in 'completion'")
    text = user[-1]
    task = text[len("Task: "):] if text.startswith("Task: ") else text
    try:
        gold = parse_assistant(answer[0], strict=True).result
    except ContractError as e:
        raise ContractError(f"{where}: key 'completion': {e}") from None
    return Case(str(obj.get("id") or where), task.strip(), gold, "sft file")


def load_pool(path=None) -> list[Case]:
    """Retrieval examples: the bundled references (default), or a gold/SFT file or folder.

    Accepted: case JSONL (`{"id","input","gold"}` or a bare result with `input`), a .json list of
    cases, TRL prompt/completion JSONL from `python -m data.sft`, or a folder of .jsonl files.
    """
    if path is None:
        from data.corpus import reference_cases
        return reference_cases()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"retrieval pool {path} does not exist")
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    out: list[Case] = []
    for f in files:
        if f.suffix != ".jsonl":
            out += load_cases(f)
            continue
        for where, obj in read_jsonl(f, what="pool example"):
            if isinstance(obj, dict) and "prompt" in obj and "completion" in obj:
                out.append(_sft_row_case(obj, where))
            else:
                out.append(case_from_dict(obj, where=where, default_id=where))
    if not out:
        raise ContractError(f"retrieval pool {path}: no examples found")
    return out


# ---- retrieval with the leave-one-out guard -------------------------------------------------------
def similarity(a_words: frozenset, b_words: frozenset) -> float:
    if not a_words or not b_words:
        return 0.0
    return len(a_words & b_words) / len(a_words | b_words)


def _self_items(task_input: str, items: list[Case], gold: DiscoveryResult | None) -> set[int]:
    """Indexes of the items the leak guard flags against the task (and its gold, if known)."""
    guard = LeakGuard([("task", task_input, gold)])
    leaks = guard.find_leaks((str(i), ex.input, ex.gold) for i, ex in enumerate(items))
    return {int(lk.where) for lk in leaks}


def ruler_gold(task_input: str) -> DiscoveryResult | None:
    """The frozen ruler's gold for this input, so retrieval also refuses an example that
    carries that gold under another input."""
    return _ruler_golds().get(normalize_input(task_input))


@functools.lru_cache(maxsize=1)
def _ruler_golds() -> dict:
    return {normalize_input(c.input): c.gold for c in ruler_cases()}


def choose_demonstrations(task_input: str, pool: list[Case], k: int,
                          gold: DiscoveryResult | None = None) -> tuple[list[Case], list[str]]:
    """(the k nearest allowed examples, ids of the pool items excluded as the case itself).

    The exclusion runs before ranking, so an excluded item can never be chosen.
    """
    flagged = _self_items(task_input, pool, gold)
    allowed = [ex for i, ex in enumerate(pool) if i not in flagged]
    excluded = [ex for i, ex in enumerate(pool) if i in flagged]
    words = content_words(task_input)
    ranked = sorted(allowed, key=lambda ex: (-similarity(words, content_words(ex.input)), ex.id))
    return ranked[:max(0, k)], [ex.id for ex in excluded]


def retrieval_messages(task_input: str, demos: list[Case],
                       gold: DiscoveryResult | None = None) -> list[dict]:
    """System prompt, demonstrations as past turns, then the task; refuses a self-demonstration."""
    flagged = _self_items(task_input, demos, gold)
    for i, d in enumerate(demos):
        if i in flagged:
            raise LeaveOneOutError(f"demonstration {d.id!r} ({d.input!r}) is the task itself "
                                   f"({task_input!r}); it must never be shown")
    system, user = planner_messages(task_input)
    turns = []
    for d in demos:
        turns += [{"role": "user", "content": planner_user_message(d.input)},
                  {"role": "assistant", "content": render_assistant(d.gold)}]
    return [system, *turns, user]


def _context_limit(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def _fit_demonstrations(tokenizer, task_input: str, demos: list[Case], budget: int | None
                        ) -> tuple[str, list[Case]]:
    """Drop the farthest demonstrations until prompt + answer fit the model's context."""
    demos = list(demos)
    while True:
        prompt = render_messages(tokenizer, retrieval_messages(task_input, demos))
        if budget is None or not demos or \
                len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= budget:
            return prompt, demos
        demos.pop()


# ---- over-generate and prune -------------------------------------------------------------------
GENERIC_RE = re.compile(
    r"\bany(?:thing)? (?:other|else|more|additional|further)\b|\banything else\b|"
    r"\bis there anything\b|\btell me more\b|\b(?:any|specific|particular|other) "
    r"(?:preferences|requirements|details|needs|concerns|considerations|constraints)\b|"
    r"\bmore (?:details|information|context)\b|\bwhat are your (?:goals|needs|thoughts)\b", re.I)
# "and"/"or" followed by a second ask, a comma-joined second ask, or two question marks.
COMPOUND_RE = re.compile(r"\s(?:and|or)\s+(?:what|when|where|which|who|why|how|do|does|did|is|"
                         r"are|will|would|can|could|should|have|has)\b|,\s*(?:what|when|where|"
                         r"which|who|why|how)\b|\?.*\?", re.I)


def question_weakness(title: str, others: list[str], task_input: str) -> float:
    """Higher = weaker: redundancy with the others, generic filler, a compound ask, no grounding."""
    words = content_words(title)
    redundancy = max((similarity(words, content_words(o)) for o in others), default=0.0)
    generic = 1.0 if GENERIC_RE.search(title) or len(words) < 2 else 0.0
    compound = 1.0 if COMPOUND_RE.search(title) else 0.0
    grounded = 1.0 if words & content_words(task_input) else 0.0
    return 1.5 * redundancy + generic + 0.75 * compound - 0.25 * grounded


def prune_questions(result: DiscoveryResult, task_input: str, keep: int = N_QUESTIONS
                    ) -> tuple[DiscoveryResult, list[dict]]:
    """Drop the weakest question until `keep` remain; ties drop the later (less critical) one."""
    qs = list(result.questions)
    dropped = []
    while len(qs) > keep:
        titles = [q.title for q in qs]
        scores = [question_weakness(t, titles[:i] + titles[i + 1:], task_input)
                  for i, t in enumerate(titles)]
        worst = max(range(len(qs)), key=lambda i: (round(scores[i], 9), i))
        dropped.append({"position": worst + 1, "title": qs[worst].title,
                        "weakness": round(scores[worst], 4)})
        del qs[worst]
    return DiscoveryResult(result.task_title, result.task_description, tuple(qs)), dropped


def _pruned(gen: Generation) -> Generation:
    if gen.result is None:
        return gen
    n_before = len(gen.result.questions)
    result, dropped = prune_questions(gen.result, gen.input)
    problems = [p for p in gen.problems if "questions, expected" not in p]
    if len(result.questions) != N_QUESTIONS:
        problems.append(f"output has {len(result.questions)} questions, expected {N_QUESTIONS}")
    return Generation(gen.input, gen.text, result, problems, gen.error, gen.n_new_tokens,
                      {**gen.details, "generated_questions": n_before, "dropped": dropped})


# ---- entry point --------------------------------------------------------------------------------
def run_pipeline(name: str, model, tokenizer, inputs: list[str],
                 options: PipelineOptions | None = None) -> list[Generation]:
    """One Generation per input, in order; per-case failures are recorded, never raised."""
    opts = options or PipelineOptions()
    common = dict(max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
                  progress=opts.progress, field_map=opts.field_map, guided=opts.guided)
    if opts.template is not None and name != "single":
        # overgen-prune asks for 8 questions and retrieval inserts demonstrations, both by
        # editing the contract's prompt; another prompt's words cannot be edited that way.
        raise ValueError(f"pipeline {name} rewrites the contract's prompt; an adapter trained "
                         "on its own prompt is scored with --pipeline single")
    if name == "single":
        prompts = [render_messages(tokenizer, opts.template.render(t) if opts.template
                                   else planner_messages(t)) for t in inputs]
        return generate_from_prompts(model, tokenizer, inputs, prompts, **common)
    if name == "overgen-prune":
        prompts = [render_messages(tokenizer, planner_messages(t, OVERGEN_QUESTIONS))
                   for t in inputs]
        gens = generate_from_prompts(model, tokenizer, inputs, prompts,
                                     n_questions=OVERGEN_QUESTIONS, **common)
        return [_pruned(g) for g in gens]
    if name == "retrieval":
        pool = opts.pool if opts.pool is not None else load_pool()
        limit = _context_limit(model)
        budget = limit - opts.max_new_tokens if limit else None
        prompts, details = [], []
        for t in inputs:
            demos, excluded = choose_demonstrations(t, pool, opts.k, ruler_gold(t))
            prompt, shown = _fit_demonstrations(tokenizer, t, demos, budget)
            prompts.append(prompt)
            details.append({"demonstrations": [{"id": d.id, "input": d.input} for d in shown],
                            "excluded_as_self": excluded,
                            "dropped_for_context": len(demos) - len(shown)})
        gens = generate_from_prompts(model, tokenizer, inputs, prompts, **common)
        for g, d in zip(gens, details):
            g.details.update(d)
        return gens
    raise ValueError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
