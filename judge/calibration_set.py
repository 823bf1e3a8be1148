"""A calibration set the project writes itself: (task, gold, candidate) triples with known ranks.

Real-judge verdicts cost money and most users have none, so the offline judge is also checked
against a set whose right answer is known by construction. From each chosen reference answer of
the bundled corpus (data/corpus/references; never a ruler case: every input goes through the
leak guard) it derives seven candidates, from gold-level to clearly bad:

| kind        | level | what the candidate is                                         |
|-------------|-------|---------------------------------------------------------------|
| paraphrase  | 4     | every gold question reworded by rules, same asks              |
| duplicated  | 3     | the last three questions restate the first three              |
| compound    | 3     | three questions also ask the next one ("..., and ...")        |
| truncated   | 2     | every title cut to its first 60% of words, no question mark   |
| shuffled    | 1     | another task's gold of the same domain, in shuffled order     |
| generic     | 0     | seven generic filler questions                                |
| off_topic   | 0     | the gold of a task from another domain                        |

Each triple carries an expected verdict in the judged-records format (judge.records): a 1..5
rubric per dimension chosen so that case quality falls with the level, and the pairwise verdict
(tie for the paraphrase, gold better for the rest). `python -m eval.calibrate` fits on part of
it and reports agreement on the rest, plus the share of same-task pairs of different levels that
the judge puts in the right order. Everything is seeded; the same call gives the same set.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace

from data.contract import Question, spec_violations
from data.corpus import reference_cases, ruler_inputs
from data.leak import LeakGuard
from data.negatives import GENERIC_QUESTIONS, compound, paraphrase
from judge.records import JudgedRecord
from judge.verdict import GOLD_BETTER, TIE, Verdict

PREFIX = "calset:"
LEVELS = {"paraphrase": 4, "duplicated": 3, "compound": 3, "truncated": 2, "shuffled": 1,
          "generic": 0, "off_topic": 0}
# Expected rubric (atomicity, specificity, coverage, naturalness, nonRedundancy): what the
# rubric's wording implies for each defect; the means fall with the level (4.8 .. 2.6).
RUBRICS = {
    "paraphrase": (5, 5, 5, 4, 5), "duplicated": (5, 4, 3, 4, 2), "compound": (2, 5, 4, 3, 4),
    "truncated": (5, 3, 3, 1, 4), "shuffled": (5, 2, 1, 4, 3), "generic": (5, 1, 1, 4, 2),
    "off_topic": (5, 1, 1, 3, 3),
}
DIMS = ("atomicity", "specificity", "coverage", "naturalness", "nonRedundancy")

# Hand-written rewrites (first match wins): the same ask in other words. Word-level synonyms
# follow; a title no rule changes gets a neutral frame, so every question is reworded.
_FRAMES = (
    (r"^What is your (.+)$", r"What would you say your \1 is"),
    (r"^What are your (.+)$", r"What would you say your \1 are"),
    (r"^How many (.+)$", r"What number of \1"),
    (r"^How much (.+)$", r"What amount of \1"),
    (r"^How often (.+)$", r"How frequently \1"),
    (r"^How long (.+)$", r"For how long \1"),
    (r"^Do you have (.+)$", r"Have you got \1"),
    (r"^Do you want (.+)$", r"Would you like \1"),
    (r"^Do you (.+)$", r"Would you say you \1"),
    (r"^Are you (.+)$", r"Would you say you are \1"),
    (r"^When (.+)$", r"At what point \1"),
    (r"^Which (.+)$", r"What \1"),
    (r"^Is there (.+)$", r"Would there be \1"),
    (r"^Does (.+)$", r"Would you say \1"),
)
_SYNONYMS = {"budget": "spending limit", "kids": "children", "child": "youngster",
             "weekly": "each week", "daily": "each day", "currently": "right now",
             "prefer": "lean toward", "plan": "intend", "need": "require", "home": "house",
             "usually": "typically", "start": "begin", "goal": "aim", "cost": "price",
             "buy": "purchase", "big": "large", "help": "support", "job": "role"}


def reword(title: str) -> str:
    ask = title.strip().rstrip("?").strip()
    out = ask
    for pat, rep in _FRAMES:
        new = re.sub(pat, rep, ask, count=1, flags=re.I)
        if new != ask:
            out = new[0].upper() + new[1:]
            break
    out = " ".join(_SYNONYMS.get(w, w) for w in out.split(" "))
    if out == ask:
        out = "Roughly, " + ask[0].lower() + ask[1:] if not ask.split()[0].isupper() else ask
    return out + "?"


def _with(gold, titles):
    return replace(gold, questions=tuple(Question(t, "") for t in titles))


def candidates_for(case, same_domain, other_domain, rng: random.Random) -> dict:
    gold = case.gold
    t = [q.title for q in gold.questions]
    out = {"paraphrase": _with(gold, [reword(x) for x in t]),
           "duplicated": _with(gold, t[:4] + [paraphrase(t[i], i) for i in range(3)])}
    comp = gold
    for i in (0, 2, 4):
        comp = compound(comp, i, i + 1, "and").result
    out["compound"] = _with(gold, [q.title for q in comp.questions])
    cut = []
    for x in t:
        words = x.rstrip("?").split()
        cut.append(" ".join(words[:max(2, round(0.6 * len(words)))]))
    out["truncated"] = _with(gold, cut)
    shuffled = [q.title for q in same_domain.gold.questions]
    rng.shuffle(shuffled)
    out["shuffled"] = _with(gold, shuffled)
    out["generic"] = _with(gold, [g[0] for g in GENERIC_QUESTIONS] + ["Anything else to add?"])
    out["off_topic"] = _with(gold, [q.title for q in other_domain.gold.questions])
    return out


def build_calibration_set(per_domain: int = 2, seed: int = 0) -> list[JudgedRecord]:
    """`per_domain` reference tasks per domain x 7 candidates (18 domains: 252 at 2)."""
    rng = random.Random(seed)
    guard = LeakGuard(ruler_inputs())
    by_domain: dict[str, list] = {}
    for c in reference_cases():
        if guard.match(c.input) is None:     # never derive anything from a ruler task
            by_domain.setdefault(c.id.rsplit("-", 1)[0], []).append(c)
    domains = sorted(by_domain)
    records = []
    for di, d in enumerate(domains):
        pool = by_domain[d]
        for k in range(min(per_domain, len(pool))):
            case = pool[k]
            same = pool[(k + 1) % len(pool)]
            other_pool = by_domain[domains[(di + 1 + k) % len(domains)]]
            other = other_pool[rng.randrange(len(other_pool))]
            for kind, cand in candidates_for(case, same, other, rng).items():
                v = spec_violations(cand)
                verdict = Verdict(TIE if kind == "paraphrase" else GOLD_BETTER,
                                  dict(zip(DIMS, map(float, RUBRICS[kind]))),
                                  f"expected by construction ({kind})")
                records.append(JudgedRecord(
                    input=case.input, gold=case.gold, candidate=cand, spec_passed=not v,
                    violations=v, verdict=verdict, experiment=PREFIX + kind,
                    case_id=f"{case.id}:{kind}", judge="calibration-set"))
    return records


def level_of(record) -> int | None:
    exp = record.experiment or ""
    return LEVELS.get(exp[len(PREFIX):]) if exp.startswith(PREFIX) else None


def ordering_accuracy(records, qualities) -> float | None:
    """Share of same-task pairs of different levels that `qualities` orders right (ties: half)."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for r, q in zip(records, qualities):
        lv = level_of(r)
        if lv is not None:
            groups.setdefault(r.input, []).append((lv, q))
    right = total = 0.0
    for items in groups.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (la, qa), (lb, qb) = items[i], items[j]
                if la == lb:
                    continue
                total += 1
                if qa == qb:
                    right += 0.5
                elif (qa > qb) == (la > lb):
                    right += 1
    return right / total if total else None
