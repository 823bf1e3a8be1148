"""Input normalisation and the leak guard.

One normalisation serves both the training-data leak guard (no ruler task may reach training)
and retrieval's leave-one-out guard (no case is ever shown its own gold). Two inputs are
near-duplicates when, after Unicode folding, lower-casing, stripping punctuation, dropping
filler words and light stemming, their content words are the same set or overlap almost
entirely — which catches "Plan a trip to Paris" vs "plan my Paris trip!" but not "Plan a trip
to Rome".

Unicode folding exists because hostile or careless input hides a ruler task from a plain text
comparison: NFKC (full-width and other compatibility forms), then accents stripped, invisible
format characters removed (category Cf: zero-width space and joiners, soft hyphen, BOM), and
Cyrillic/Greek letters that look like Latin ones mapped to those (CONFUSABLES).

The guard (LeakGuard) flags a training item when any of these holds against a protected case:
- near-duplicate input (near_duplicate above);
- containment: all of a protected input's content words (at least CONTAIN_MIN_WORDS) appear in
  a longer input ("Plan a trip to Paris and book a dentist appointment");
- semantic near-duplicate: cosine of MiniLM sentence embeddings (data.embedding) at or above
  SEMANTIC_THRESHOLD ("Make a monthly budget after my pay was cut");
- gold side: the item's answer repeats a protected gold — at least GOLD_OVERLAP of the gold's
  question titles have a near-duplicate title in the answer. This is the bigger leak: the model
  would learn the gold itself, whatever input it is paired with.
Without the encoder package the semantic check is skipped with a RuntimeWarning.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Iterable

# Words whose presence or absence is "trivial rewording" for a one-line task.
FILLER = frozenset("""
a an the my our your their his her its me us i we you to for of in on at by with from into
please help need want would like can could should will just some this that these those
get getting go going do doing make making how about up out new
""".split())

NEAR_DUPLICATE_JACCARD = 0.75
NEAR_DUPLICATE_RATIO = 0.92
CONTAIN_MIN_WORDS = 3      # a 1-2 word ruler input inside a longer task is a topic, not a copy
# Calibrated on the bundled data (tests/test_hostile_inputs.py measures it again): the 324 pool
# tasks' highest cosine to any of the 30 ruler inputs is 0.62 ("Organize a weekly family meeting
# routine" vs ruler-11), a close paraphrase of a ruler input scores 0.96. 0.80 sits in the
# middle of that gap; MiniLM puts same-task rewordings at 0.8-0.95.
SEMANTIC_THRESHOLD = 0.80
# Share of a protected gold's question titles found (near-duplicate) in a training answer. The
# bundled references reach at most 1 of 7 against any ruler gold; a copied gold reaches 7 of 7.
GOLD_OVERLAP = 0.5

# Letters that render like Latin ones (Unicode's confusables, restricted to the Cyrillic and
# Greek letters that are near-identical to a Latin letter in common fonts). Folded before
# comparing, so "Plan а trip" with a Cyrillic "а" is the ruler's "Plan a trip".
CONFUSABLES = str.maketrans({
    # Cyrillic lower case
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "һ": "h", "ӏ": "l", "ѵ": "v",
    # Cyrillic upper case
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Һ": "H",
    "Ӏ": "I", "Ѵ": "V",
    # Greek
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "υ": "u", "τ": "t", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
})


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def fold_unicode(text: str) -> str:
    """Compatibility forms, accents, invisible format characters and Latin look-alikes folded
    away; what is left reads the same as the text does on screen."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(c for c in text
                   if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")
    return text.translate(CONFUSABLES)


def normalize_input(text: str) -> str:
    """Lower-cased, Unicode-folded, punctuation-free, single-spaced text."""
    text = fold_unicode(text).lower()
    text = re.sub(r"[’']s\b", "", text)
    text = re.sub(r"[^\w\s$]", " ", text)
    return " ".join(text.split())


def content_words(text: str) -> frozenset[str]:
    words = [_stem(w) for w in normalize_input(text).split() if w not in FILLER]
    return frozenset(words)


def _same_task(na: str, wa: frozenset, nb: str, wb: frozenset) -> bool:
    """near_duplicate on precomputed normalised text and content words."""
    if na == nb or (wa and wa == wb):
        return True
    if wa and wb and len(wa & wb) / len(wa | wb) >= NEAR_DUPLICATE_JACCARD:
        return True
    return difflib.SequenceMatcher(None, " ".join(sorted(wa)), " ".join(sorted(wb))).ratio() \
        >= NEAR_DUPLICATE_RATIO


def near_duplicate(a: str, b: str) -> bool:
    """True when two inputs are the same task up to case, punctuation or trivial rewording."""
    return _same_task(normalize_input(a), content_words(a), normalize_input(b), content_words(b))


def _titles(result) -> list[tuple[str, frozenset]]:
    return [(normalize_input(q.title), content_words(q.title)) for q in result.questions]


def contains_task(text: str, protected: str) -> bool:
    """True when every content word of `protected` (at least CONTAIN_MIN_WORDS) is in `text`."""
    pw = content_words(protected)
    return len(pw) >= CONTAIN_MIN_WORDS and pw <= content_words(text)


def gold_overlap(answer, gold) -> float:
    """Share of `gold`'s question titles with a near-duplicate title in `answer` (both
    DiscoveryResult-like: `.questions[i].title`)."""
    return _overlap(_titles(answer), _titles(gold))


def _overlap(answer_titles, gold_titles) -> float:
    if not gold_titles:
        return 0.0
    hits = sum(any(wg & wa and _same_task(ng, wg, na, wa) for na, wa in answer_titles)
               for ng, wg in gold_titles)
    return hits / len(gold_titles)


@dataclass(frozen=True)
class Leak:
    where: str          # file:line or id of the offending training item
    input: str
    protected_id: str   # the ruler case it collides with
    protected_input: str
    kind: str = "near-duplicate"    # near-duplicate | contains | semantic | gold
    similarity: float | None = None  # cosine (semantic) or share of gold titles (gold)

    def describe(self) -> str:
        how = self.kind + (f" {self.similarity:.2f}" if self.similarity is not None else "")
        return (f"{self.where}: {self.input!r} ~ ruler {self.protected_id} "
                f"{self.protected_input!r} ({how})")


class LeakGuard:
    """Holds the protected cases (the ruler) and finds training items that collide with them.

    `protected`: (id, input) pairs, or (id, input, gold) triples to enable the gold-side check.
    `semantic`: use the sentence encoder (the ruler is embedded once per guard; candidate inputs
    are embedded in one batch per find_leaks call).
    """

    def __init__(self, protected: Iterable[tuple], *, semantic: bool = True,
                 threshold: float = SEMANTIC_THRESHOLD):
        self.protected = []
        for row in protected:
            pid, text, gold = (tuple(row) + (None,))[:3]
            # Normalised once here: find_leaks compares every item with every protected case.
            self.protected.append((pid, text, normalize_input(text), content_words(text),
                                   _titles(gold) if gold is not None else None))
        self.threshold = threshold
        self.semantic = semantic
        self._encoder = None
        self._vectors = None

    def _encoder_or_none(self):
        """The encoder and the ruler's vectors, or None (with one warning) without the package."""
        if not self.semantic or not self.protected:
            return None
        if self._encoder is None:
            from data.embedding import EmbeddingUnavailable, load_encoder
            try:
                self._encoder = load_encoder()
            except EmbeddingUnavailable as e:
                warnings.warn(f"{e}; the leak guard falls back to its lexical checks (no "
                              "semantic near-duplicates)", RuntimeWarning, stacklevel=3)
                self.semantic = False
                return None
            self._vectors = self._encoder.encode([p[1] for p in self.protected])
        return self._encoder

    def _lexical(self, where: str, text: str, answer) -> Leak | None:
        words, norm = content_words(text), normalize_input(text)
        for pid, ptext, pnorm, pwords, _ in self.protected:
            # Near-duplicates and containment both need shared content words.
            if words and pwords and words & pwords:
                if _same_task(norm, words, pnorm, pwords):
                    return Leak(where, text, pid, ptext)
                if len(pwords) >= CONTAIN_MIN_WORDS and pwords <= words:
                    return Leak(where, text, pid, ptext, "contains")
        if answer is not None:
            titles = _titles(answer)
            for pid, ptext, _, _, gold_titles in self.protected:
                share = _overlap(titles, gold_titles) if gold_titles else 0.0
                if share >= GOLD_OVERLAP:
                    return Leak(where, text, pid, ptext, "gold", round(share, 3))
        return None

    def find_leaks(self, items: Iterable[tuple]) -> list[Leak]:
        """Every offending item (not only the first): items are (where, input) or
        (where, input, answer) with answer a DiscoveryResult for the gold-side check."""
        items = [tuple(it) + (None,) for it in items]
        found: dict[int, Leak] = {}
        for i, (where, text, answer, *_) in enumerate(items):
            hit = self._lexical(where, text, answer)
            if hit:
                found[i] = hit
        rest = [i for i in range(len(items)) if i not in found]
        enc = self._encoder_or_none() if rest else None
        if enc is not None:
            sims = enc.encode([items[i][1] for i in rest]) @ self._vectors.T
            for row, i in zip(sims, rest):
                j = int(row.argmax())
                if row[j] >= self.threshold:
                    pid, ptext = self.protected[j][:2]
                    found[i] = Leak(items[i][0], items[i][1], pid, ptext, "semantic",
                                    round(float(row[j]), 3))
        return [found[i] for i in sorted(found)]

    def nearest(self, texts: list[str]) -> list[tuple[str, float]]:
        """(nearest protected id, cosine) per text; for calibration reports."""
        enc = self._encoder_or_none()
        if enc is None:
            return []
        sims = enc.encode(list(texts)) @ self._vectors.T
        return [(self.protected[int(r.argmax())][0], float(r.max())) for r in sims]

    def match(self, text: str) -> tuple[str, str] | None:
        leaks = self.find_leaks([("", text)])
        return (leaks[0].protected_id, leaks[0].protected_input) if leaks else None


def ruler_guard(cases_dir=None, *, semantic: bool = True) -> LeakGuard:
    """The guard over the frozen ruler's inputs and golds (eval/ruler/cases by default)."""
    from data.corpus import ruler_cases
    return LeakGuard([(c.id, c.input, c.gold) for c in ruler_cases(cases_dir)],
                     semantic=semantic)


class LeakError(RuntimeError):
    def __init__(self, leaks: list[Leak]):
        self.leaks = leaks
        lines = ["  " + lk.describe() for lk in leaks]
        super().__init__(f"leak guard: {len(leaks)} training item(s) equal, contain, paraphrase "
                         "or answer with a ruler task; remove them:\n" + "\n".join(lines))
