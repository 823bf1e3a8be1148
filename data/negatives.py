"""Targeted synthetic negatives: a gold answer damaged in exactly one way the judge measures.

Preference pairs only teach what the chosen and rejected answers differ in. Pairs that contrast
two teacher styles taught the wrong correlate in the published work, so these negatives keep the
gold's wording and change one judged quality, each still a valid contract object with exactly 7
questions (the damage must be visible to the judge, not to the spec gate):

- drop-critical: one of the gold's most decision-critical questions (the first three; the
  planner prompt asks for most-critical-first) is removed and a plausible but generic question is
  appended -> lower specificity and coverage.
- compound: question i becomes "ask i, and ask j" (one title asking two things); question j stays,
  so the set keeps 7 questions and every gold ask -> lower atomicity. Ask j now appears twice, so
  non-redundancy drops too: keeping 7 questions without inventing content has no other way.
- redundant: a later question is replaced by a paraphrase of an earlier one -> lower
  non-redundancy.

Everything is deterministic for a seed. Nothing here looks at a judge: the tests check that the
offline judge sees each damage on its targeted dimension.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from data.contract import N_QUESTIONS, DiscoveryResult, Question, spec_violations
from data.leak import content_words

DROP_CRITICAL, COMPOUND, REDUNDANT = "drop-critical", "compound", "redundant"
KINDS = (DROP_CRITICAL, COMPOUND, REDUNDANT)
# The rubric dimensions each kind is built to lower (the sidecar and the tests use this).
TARGETS = {DROP_CRITICAL: ("specificity", "coverage"), COMPOUND: ("atomicity",),
           REDUNDANT: ("nonRedundancy",)}

# Plausible-sounding filler a weak draft asks instead of a decision-critical question.
GENERIC_QUESTIONS = (
    ("Do you have any other preferences I should know about?",
     "Preferences can shape the plan."),
    ("Is there anything else you would like me to consider?",
     "Extra context may be useful."),
    ("Are there any specific requirements you have in mind?",
     "Requirements help tailor the plan."),
    ("Do you have any particular concerns about this?",
     "Concerns are worth addressing early."),
    ("What are your main goals for this?",
     "Goals guide the plan."),
    ("Is there anything else that matters to you here?",
     "Other factors may matter."),
)

# Words a question title usually starts with; only these are lower-cased when a title is
# embedded in another sentence (a proper noun such as "Paris" keeps its capital).
_LEADING_WORDS = frozenset("""
what when where which who whom whose why how do does did is are was were will would can could
should shall have has had may might am in on at for to if
""".split())


# Question scaffolding that carries no topic (content_words keeps these; they must not count).
_SCAFFOLD = content_words(" ".join(_LEADING_WORDS) + " long often many much already usually "
                          "currently ever still any there right now")


def _topic_words(text: str) -> frozenset[str]:
    return content_words(text) - _SCAFFOLD


@dataclass(frozen=True)
class Negative:
    kind: str                  # one of KINDS
    result: DiscoveryResult    # the damaged answer (valid contract object, 7 questions)
    note: str                  # what was changed, in words, for the sidecar and the notebook
    positions: tuple[int, ...]  # 0-based question positions involved (for provenance)

    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS[self.kind]


class NegativeError(ValueError):
    """A negative could not be built from this gold (the message says why)."""


def _lower_first(title: str) -> str:
    words = title.split(maxsplit=1)
    if words and words[0].lower() in _LEADING_WORDS:
        return title[0].lower() + title[1:]
    return title


def _ask(title: str) -> str:
    """A title without its closing question mark (and surrounding space)."""
    return title.strip().rstrip("?").rstrip()


def _finish(gold: DiscoveryResult, questions: list[Question], kind: str, note: str,
            positions: tuple[int, ...]) -> Negative:
    result = replace(gold, questions=tuple(questions))
    bad = spec_violations(result)
    if bad:  # e.g. a gold that already fails the gate; never emit an invalid negative
        raise NegativeError(f"{kind} negative fails the spec gate: {'; '.join(bad)}")
    if result == gold:
        raise NegativeError(f"{kind} negative is identical to the gold")
    return Negative(kind, result, note, positions)


def _check_gold(gold: DiscoveryResult) -> None:
    if len(gold.questions) != N_QUESTIONS:
        raise NegativeError(f"gold has {len(gold.questions)} questions, expected {N_QUESTIONS}")


def drop_critical(gold: DiscoveryResult, index: int = 0, filler: int = 0) -> Negative:
    """Remove question `index` and append generic question number `filler`."""
    _check_gold(gold)
    qs = list(gold.questions)
    dropped = qs.pop(index)
    title, desc = GENERIC_QUESTIONS[filler % len(GENERIC_QUESTIONS)]
    if any(q.title.lower() == title.lower() for q in qs):
        raise NegativeError("the generic question is already in the gold")
    # "What are your main goals?" must not stand in for a dropped "What is your main goal for X?".
    if _topic_words(title) & _topic_words(dropped.title):
        raise NegativeError("the generic question shares words with the dropped one")
    qs.append(Question(title, desc, False))
    note = f"dropped Q{index + 1} {dropped.title!r}; added generic {title!r}"
    return _finish(gold, qs, DROP_CRITICAL, note, (index,))


def compound(gold: DiscoveryResult, i: int, j: int, conj: str = "and") -> Negative:
    """Question i asks both its own thing and question j's, joined by `conj` ("and"/"or")."""
    _check_gold(gold)
    if i == j:
        raise NegativeError("compound needs two different questions")
    if conj not in ("and", "or"):
        raise NegativeError(f"conj must be 'and' or 'or', got {conj!r}")
    qs = list(gold.questions)
    a, b = qs[i], qs[j]
    title = f"{_ask(a.title)}, {conj} {_lower_first(_ask(b.title))}?"
    qs[i] = Question(title, f"{a.description} {b.description}".strip(),
                     a.requires_external_action or b.requires_external_action)
    note = f"merged Q{j + 1} into Q{i + 1} with {conj!r}: {title!r}"
    return _finish(gold, qs, COMPOUND, note, (i, j))


# Rewrites that keep a question's content words (so it truly repeats the other question) while
# changing its frame; the first matching rule wins, the fallback prefix always applies.
_PARAPHRASES = (
    (re.compile(r"^How (many|much) (.+)$", re.I), lambda m: f"Roughly how {m[1]} {m[2]}"),
    (re.compile(r"^What (is|are) (.+)$", re.I),
     lambda m: f"Can you tell me what {m[2]} {m[1].lower()}"),
    (re.compile(r"^When (.+)$", re.I), lambda m: f"Around when {m[1]}"),
)
# Each frame adds at most one content word, so the restatement stays close to its source; a
# colon, not a comma, so "..., how many" cannot read as a second clause (a compound ask).
_PREFIXES = ("Just to confirm:", "Again:")


def paraphrase(title: str, variant: int = 0) -> str:
    """A restatement of a question title that asks the same thing in other words."""
    ask = _ask(title)
    if variant % 2 == 0:
        for pattern, rewrite in _PARAPHRASES:
            m = pattern.match(ask)
            if m:
                return rewrite(m) + "?"
    return f"{_PREFIXES[variant % len(_PREFIXES)]} {_lower_first(ask)}?"


def redundant(gold: DiscoveryResult, source: int, replaced: int, variant: int = 0) -> Negative:
    """Question `replaced` becomes a paraphrase of question `source`."""
    _check_gold(gold)
    if source == replaced:
        raise NegativeError("redundant needs two different questions")
    qs = list(gold.questions)
    src, old = qs[source], qs[replaced]
    title = paraphrase(src.title, variant)
    qs[replaced] = Question(title, src.description, src.requires_external_action)
    note = f"replaced Q{replaced + 1} {old.title!r} with a paraphrase of Q{source + 1}: {title!r}"
    return _finish(gold, qs, REDUNDANT, note, (source, replaced))


def _redundant_order(gold: DiscoveryResult, task_input: str, pairs: list[tuple[int, int]]
                     ) -> list[tuple[int, int]]:
    """Most telling (source, replaced) pairs first: a source with topic words of its own beyond
    the task's, and a distinct replaced question — sharing no words with the others and having
    its own topic — so that the repeat is the one overlap in the set. Python's sort is stable,
    so ties keep the seeded order."""
    words = [_topic_words(q.title) for q in gold.questions]
    task = _topic_words(task_input)
    substance = [min(3, len(w - task)) for w in words]
    overlap = [max(len(words[r] & words[o]) for o in range(len(words)) if o != r)
               for r in range(len(words))]
    return sorted(pairs, key=lambda p: (-substance[p[0]], overlap[p[1]], -substance[p[1]]))


def make_negatives(gold: DiscoveryResult, per_kind: int = 2, seed: int = 0,
                   kinds: tuple[str, ...] = KINDS, task_input: str = "") -> list[Negative]:
    """Up to `per_kind` distinct negatives of each kind (fewer only if a gold cannot give more).

    With `task_input`, a redundant negative prefers to repeat a question that has topic words
    beyond the task's own ("How often should the group walk?" for "Start a walking group" has
    none, so repeating it barely reads as a repeat).
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown negative kind(s) {unknown}; valid: {', '.join(KINDS)}")
    _check_gold(gold)
    rng = random.Random(f"{seed}|{gold.task_title}")
    out: list[Negative] = []

    def collect(attempts) -> None:
        made, seen = 0, set()
        for make in attempts:
            if made >= per_kind:
                break
            try:
                neg = make()
            except NegativeError:
                continue
            if neg.result in seen:
                continue
            seen.add(neg.result)
            out.append(neg)
            made += 1

    if DROP_CRITICAL in kinds:
        n_fill = len(GENERIC_QUESTIONS)
        fillers = rng.sample(range(n_fill), n_fill)
        order = rng.sample(range(3), 3)
        # Every index once before any index twice; a filler that clashes moves to the next one.
        collect([lambda k=k, t=t: drop_critical(gold, k, fillers[(k + t) % n_fill])
                 for t in range(n_fill) for k in order])
    if COMPOUND in kinds:
        pairs = [(i, i + 1) for i in range(N_QUESTIONS - 1)]
        rng.shuffle(pairs)
        collect([lambda p=p, n=n: compound(gold, *p, "and" if n % 2 == 0 else "or")
                 for n, p in enumerate(pairs)])
    if REDUNDANT in kinds:
        pairs = [(s, r) for s in range(4) for r in range(4, N_QUESTIONS)]
        rng.shuffle(pairs)
        pairs = _redundant_order(gold, task_input, pairs)
        collect([lambda p=p, n=n: redundant(gold, p[0], p[1], n)
                 for n, p in enumerate(pairs)])
    return out
