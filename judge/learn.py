"""Fit the learned offline judge on judged records with real-judge verdicts.

    python -m judge.learn --records FILE [FILE ...] --out DIR
                          [--groups embed,offline,text[,judges]] [--alpha 30] [--c 0.05]
                          [--backend embedding|lexical]

FILE: judge.records JSONL (e.g. written by python -m judge.published). Records with a verdict,
a gold and a candidate and no error are learned from; the others are counted and skipped. A
malformed record stops the run with file:line and key (exit 2). DIR receives weights.safetensors,
config.json and manifest.json (judge.learned); load it with --judge learned:DIR.
"""
from __future__ import annotations

import argparse
import sys

from data.cli_types import POSITIVE
from judge.records import RecordError, read_records
from judge.features import DEFAULT_GROUPS, GROUPS
from judge.learned import (DEFAULT_ALPHA, DEFAULT_C, LearnedJudgeError, save, train,
                           trainable)


def similarity(backend: str):
    from judge.judges.offline_features import EmbeddingSimilarity, LexicalSimilarity
    return EmbeddingSimilarity() if backend == "embedding" else LexicalSimilarity()


def parse_groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise LearnedJudgeError(f"--groups: unknown group(s) {bad}; choose from "
                                f"{', '.join(GROUPS)}")
    return groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m judge.learn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", nargs="+", required=True, help="judged-records JSONL file(s)")
    p.add_argument("--out", required=True, help="folder for the fitted judge")
    p.add_argument("--groups", default=",".join(DEFAULT_GROUPS),
                   help=f"feature groups, from {', '.join(GROUPS)} (default: embed,offline,text)")
    p.add_argument("--alpha", type=POSITIVE, default=DEFAULT_ALPHA, help="ridge strength")
    p.add_argument("--c", type=POSITIVE, default=DEFAULT_C, help="pairwise inverse L2 strength")
    p.add_argument("--backend", choices=("embedding", "lexical"), default="embedding",
                   help="similarity for the features (embedding: bundled all-MiniLM-L6-v2)")
    args = p.parse_args(argv)
    try:
        groups = parse_groups(args.groups)
        records = [r for f in args.records for r in read_records(f)]
        sim = similarity(args.backend)
        model, manifest = train(records, sim, groups=groups, alpha=args.alpha, c=args.c)
        name = save(model, manifest, args.out, sim.identity)
    except (RecordError, LearnedJudgeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: judge {name}, {len(trainable(records))} of {len(records)} records "
          f"learned from, {len(model.feature_names)} features ({', '.join(groups)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
