"""Input normalisation and the leak guard.

One normalisation serves both the training-data leak guard (no ruler task may reach training)
and retrieval's leave-one-out guard (no case is ever shown its own gold). Two inputs are
near-duplicates when, after lower-casing, stripping punctuation, dropping filler words and
light stemming, their content words are the same set or overlap almost entirely — which catches
"Plan a trip to Paris" vs "plan my Paris trip!" but not "Plan a trip to Rome".
"""
from __future__ import annotations

import difflib
import re
import unicodedata
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


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def normalize_input(text: str) -> str:
    """Lower-cased, accent- and punctuation-free, single-spaced text."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[’']s\b", "", text)
    text = re.sub(r"[^\w\s$]", " ", text)
    return " ".join(text.split())


def content_words(text: str) -> frozenset[str]:
    words = [_stem(w) for w in normalize_input(text).split() if w not in FILLER]
    return frozenset(words)


def near_duplicate(a: str, b: str) -> bool:
    """True when two inputs are the same task up to case, punctuation or trivial rewording."""
    na, nb = normalize_input(a), normalize_input(b)
    if na == nb:
        return True
    wa, wb = content_words(a), content_words(b)
    if wa and wa == wb:
        return True
    if wa and wb and len(wa & wb) / len(wa | wb) >= NEAR_DUPLICATE_JACCARD:
        return True
    return difflib.SequenceMatcher(None, " ".join(sorted(wa)), " ".join(sorted(wb))).ratio() \
        >= NEAR_DUPLICATE_RATIO


@dataclass(frozen=True)
class Leak:
    where: str          # file:line or id of the offending training item
    input: str
    protected_id: str   # the ruler case it collides with
    protected_input: str


class LeakGuard:
    """Holds the protected inputs (the ruler) and finds training items that collide with them."""

    def __init__(self, protected: Iterable[tuple[str, str]]):
        self.protected = [(pid, text, content_words(text)) for pid, text in protected]

    def match(self, text: str) -> tuple[str, str] | None:
        words = content_words(text)
        for pid, ptext, pwords in self.protected:
            # Cheap prefilter: near-duplicates always share content words.
            if words and pwords and not (words & pwords):
                continue
            if near_duplicate(text, ptext):
                return pid, ptext
        return None

    def find_leaks(self, items: Iterable[tuple[str, str]]) -> list[Leak]:
        leaks = []
        for where, text in items:
            hit = self.match(text)
            if hit:
                leaks.append(Leak(where, text, hit[0], hit[1]))
        return leaks


class LeakError(RuntimeError):
    def __init__(self, leaks: list[Leak]):
        self.leaks = leaks
        lines = [f"  {lk.where}: {lk.input!r} ~ ruler {lk.protected_id} {lk.protected_input!r}"
                 for lk in leaks]
        super().__init__(f"leak guard: {len(leaks)} training input(s) equal or nearly equal a "
                         "ruler task; remove them:\n" + "\n".join(lines))
