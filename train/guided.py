"""Guided generation: decoding constrained to the contract's JSON schema, as on device.

Apple's Foundation Models framework decodes a `@Generable` type under its schema, so an app gets
exactly the structure it declared (here: a title, a summary and exactly seven questions) whatever
the adapter would have emitted freely. `--guided` does the same during development: at every step
the tokens that cannot continue a schema-valid answer are masked out of the logits before the
pick (greedy or sampled), and EOS is allowed only once the answer is complete.

The grammar engine is llguidance (measured against xgrammar in bench/guided.py: both compile the
schema in milliseconds; llguidance has no dependencies and serves the torch and MLX engines from
one numpy mask). The schema is data.contract.json_schema (minItems = maxItems = 7) with length
bounds on its strings (STRING_BOUNDS); whitespace
follows the contract's rendering (data.contract.render_assistant), which adapters are trained on.
Masks depend only on the tokens taken, so guided greedy decoding stays deterministic and batched.
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from data.contract import N_QUESTIONS, json_schema

GRAMMAR_LIBRARY = "llguidance"
# The contract renders `{"k": v, "k": v, "questions": [\n{...},\n{...}\n]}`: a space after
# "," and ":" and a newline around each question. Separators "," and ":" plus at most one space
# or newline of whitespace admit exactly that (all 162 references pass) without letting a model
# pad an answer with runs of blanks.
JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": r"[ \n]?",
                "item_separator": ",", "key_separator": ":"}


class GuidedUnavailable(RuntimeError):
    """llguidance is not installed (pip install -c constraints.txt -e '.[guided]')."""


def _llguidance():
    try:
        import llguidance
        import llguidance.hf  # noqa: F401
    except ImportError:
        raise GuidedUnavailable("--guided needs llguidance: pip install -c constraints.txt "
                                "-e '.[guided]'") from None
    return llguidance


# Length bounds on every string, in characters: no empty field (the spec gate fails an empty title)
# and no runaway string (a small model under a grammar can otherwise fill one field until the token
# budget ends). Each bound is at least 1.5x the longest field of the 192 bundled gold answers
# (41, 159, 69 and 103 characters), so no answer the teacher would write is cut.
STRING_BOUNDS = {"taskTitle": 80, "taskDescription": 240, "title": 120, "description": 200}


def guided_schema(n_questions: int = N_QUESTIONS) -> dict:
    """The contract's JSON schema (data.contract.json_schema) with STRING_BOUNDS applied."""
    schema = json_schema(n_questions)
    item = schema["properties"]["questions"]["items"]
    for props in (schema["properties"], item["properties"]):
        for key, bound in STRING_BOUNDS.items():
            if key in props:
                props[key] = dict(props[key], minLength=1, maxLength=bound)
    return schema


@lru_cache(maxsize=8)
def schema_grammar(n_questions: int = N_QUESTIONS) -> str:
    ll = _llguidance()
    grammar = ll.LLMatcher.grammar_from_json_schema(json.dumps(guided_schema(n_questions)),
                                                    defaults=JSON_OPTIONS)
    err = ll.LLMatcher.validate_grammar(grammar)
    if err and not err.startswith("WARNING"):
        raise ValueError(f"the contract's schema does not compile: {err}")
    return grammar


_TOKENIZERS: dict = {}


def _ll_tokenizer(tokenizer, n_vocab: int):
    """One llguidance tokenizer per (HF tokenizer, logits width); building one takes ~1 s."""
    key = (id(tokenizer), n_vocab)
    hit = _TOKENIZERS.get(key)
    if hit is None or hit[0] is not tokenizer:
        ll = _llguidance()
        hit = (tokenizer, ll.hf.from_tokenizer(tokenizer, n_vocab=n_vocab))
        _TOKENIZERS[key] = hit
    return hit[1]


class GuidedRows:
    """One grammar matcher per sequence of a batch. `allowed(rows, n_vocab)` gives the boolean
    token mask of those rows over a logits row of width n_vocab; `advance(rows, tokens)` feeds
    each row the token it took. Rows that finished (EOS taken) are left alone."""

    def __init__(self, tokenizer, n_rows: int, n_questions: int = N_QUESTIONS):
        self.tokenizer, self.n_rows, self.n_questions = tokenizer, n_rows, n_questions
        self.eos = tokenizer.eos_token_id
        self.matchers: list | None = None    # built on the first step, when the width is known

    def _start(self, n_vocab: int) -> None:
        ll = _llguidance()
        lltok = _ll_tokenizer(self.tokenizer, n_vocab)
        grammar = schema_grammar(self.n_questions)
        self.matchers = [ll.LLMatcher(lltok, grammar) for _ in range(self.n_rows)]
        self._bits = np.zeros(((n_vocab + 31) // 32,), dtype=np.int32)

    def allowed(self, rows: list[int], n_vocab: int) -> np.ndarray:
        if self.matchers is None:
            self._start(n_vocab)
        out = np.zeros((len(rows), n_vocab), dtype=bool)
        for i, row in enumerate(rows):
            m = self.matchers[row]
            if m.is_error():
                out[i] = True           # nothing sensible left to enforce; never an empty mask
                continue
            m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
            out[i] = bits[:n_vocab].astype(bool)
            if not out[i].any():
                out[i, self.eos] = True
        return out

    def advance(self, rows: list[int], tokens: list[int]) -> None:
        for row, tok in zip(rows, tokens):
            m = self.matchers[row]
            if not m.is_error() and not m.is_stopped():
                m.consume_token(int(tok))

    def errors(self) -> list[str]:
        """Per row: the matcher's error ("" when the row followed the grammar)."""
        return [m.get_error() for m in self.matchers or []]


def mask_torch_logits(guide: GuidedRows, rows: list[int], logits):
    """logits (len(rows), vocab) with disallowed tokens at -inf (a new tensor)."""
    import torch
    allowed = torch.from_numpy(guide.allowed(rows, logits.shape[-1])).to(logits.device)
    return logits.masked_fill(~allowed, float("-inf"))


def logits_processor(tokenizer, n_questions: int = N_QUESTIONS):
    """A transformers LogitsProcessor for `model.generate` (sampling, several sequences per
    prompt): the first call sees the prompts, every later call the token each row just took."""
    from transformers import LogitsProcessor

    class GuidedLogitsProcessor(LogitsProcessor):
        def __init__(self):
            self.guide: GuidedRows | None = None

        def __call__(self, input_ids, scores):
            rows = list(range(input_ids.shape[0]))
            if self.guide is None:
                self.guide = GuidedRows(tokenizer, len(rows), n_questions)
            else:
                self.guide.advance(rows, input_ids[:, -1].tolist())
            return mask_torch_logits(self.guide, rows, scores)

    return GuidedLogitsProcessor()


def guide_generate(model, tokenizer, n_questions: int = N_QUESTIONS) -> None:
    """Make every `model.generate` call on this instance decode under the schema: for trainers
    that sample inside their own loop (TRL's GRPO and RLOO), a fresh processor per call."""
    from transformers import LogitsProcessorList

    unguided = model.generate

    def generate(*args, **kwargs):
        procs = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        procs.append(logits_processor(tokenizer, n_questions))
        return unguided(*args, logits_processor=procs, **kwargs)

    model.generate = generate
