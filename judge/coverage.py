"""Which ruler case each scored line belongs to, and the lines a scorer must not count.

A headline is the mean over the ruler's cases, so a file that repeats a case, carries a task the
ruler does not have, or was judged on another ruler gives a number that looks valid and is not
(30 copies of one case report "cases 30"). eval.score and eval.judge refuse such files (exit 1,
every offending line named) unless a flag says otherwise:

- `--allow-duplicates`: keep the first line of each case, drop the later repeats;
- `--allow-unknown`: eval.score scores non-ruler records with a notice; eval.judge skips them
  (it has no gold to judge them against);
- `--allow-other-ruler`: score records stamped with another ruler's hash, with a notice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from data.leak import normalize_input

ALLOW_FLAGS = ("--allow-duplicates", "--allow-unknown", "--allow-other-ruler")


@dataclass
class Entry:
    where: str                  # file:line
    case_id: str | None = None
    input: str | None = None
    ruler: dict | None = None   # {"version", "hash"} the line says it was judged on


@dataclass
class Coverage:
    case_of: list[str | None] = field(default_factory=list)   # ruler case id per entry, or None
    duplicates: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    other_ruler: list[str] = field(default_factory=list)
    repeat_index: set[int] = field(default_factory=set)       # entries that repeat a case

    def refusals(self, *, allow_duplicates=False, allow_unknown=False, allow_other_ruler=False
                 ) -> list[str]:
        out = []
        if self.duplicates and not allow_duplicates:
            out += [f"{d} (--allow-duplicates keeps the first)" for d in self.duplicates]
        if self.unknown and not allow_unknown:
            out += [f"{u} (--allow-unknown)" for u in self.unknown]
        if self.other_ruler and not allow_other_ruler:
            out += [f"{o} (--allow-other-ruler)" for o in self.other_ruler]
        return out


def check_entries(entries: list[Entry], cases, ruler: dict) -> Coverage:
    """Map every entry to its ruler case (by id, else by normalised input) and list the
    duplicates, the unknown cases and the lines judged on another ruler, each with file:line."""
    by_id = {c.id: c for c in cases}
    by_input = {normalize_input(c.input): c for c in cases}
    cov = Coverage()
    first: dict[str, str] = {}
    for i, e in enumerate(entries):
        case = None
        if e.case_id is not None:
            case = by_id.get(e.case_id)
            if case is None:
                cov.unknown.append(f"{e.where}: key 'id': {e.case_id!r} is not a ruler case")
            elif e.input is not None and normalize_input(e.input) != normalize_input(case.input):
                cov.unknown.append(f"{e.where}: id {e.case_id} but input {e.input!r} is not "
                                   f"that case's task {case.input!r}")
                case = None
        elif e.input is not None:
            case = by_input.get(normalize_input(e.input))
            if case is None:
                cov.unknown.append(f"{e.where}: key 'input': {e.input!r} is not a ruler task")
        cov.case_of.append(case.id if case else None)
        if case is not None:
            if case.id in first:
                cov.duplicates.append(f"{e.where}: case {case.id} already given at "
                                      f"{first[case.id]}")
                cov.repeat_index.add(i)
            else:
                first[case.id] = e.where
        if e.ruler and e.ruler.get("hash") != ruler["hash"]:
            cov.other_ruler.append(
                f"{e.where}: judged on ruler v{e.ruler.get('version')} "
                f"{str(e.ruler.get('hash'))[:12]}, the current ruler is v{ruler['version']} "
                f"{str(ruler['hash'])[:12]}")
    return cov


def refusal_message(source: str, refusals: list[str]) -> str:
    return (f"{source}: {len(refusals)} line(s) would distort the score (repeated, unknown or "
            "judged on another ruler); fix the file or pass the flag named:\n  "
            + "\n  ".join(refusals))


def add_refusal_flags(parser, verb: str, unknown: str) -> None:
    """The --allow-* flags of every scorer (`verb`: what it does with a line, e.g. "judge";
    `unknown`: what it does with a non-ruler line when allowed)."""
    parser.add_argument("--allow-duplicates", action="store_true",
                        help=f"{verb} the first line of each ruler case and ignore later repeats "
                             "(default: refuse a file that repeats a case, exit 1)")
    parser.add_argument("--allow-unknown", action="store_true",
                        help=f"{unknown} lines whose id or input is not a ruler case "
                             "(default: refuse)")
    parser.add_argument("--allow-other-ruler", action="store_true",
                        help="accept lines stamped with another ruler's hash (default: refuse)")
