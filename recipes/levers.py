"""Every training lever on one ruler: `python -m recipes.levers [--methods dpo,grpo,...]
[--max-steps N] [--out runs/levers] [--fresh]`.

From one tiny SFT adapter on the embedded stand-in (offline, no network), trains each method with
its tiny config — ORPO, DPO, IPO, SimPO, KTO on judge-ranked pairs, GRPO and RLOO with the
offline judge as reward, adversarial distillation (GRPO with a discriminator reward), rejection-
sampling fine-tuning — scores SFT and each of them on the frozen ruler into one experiment log
(`lever` set to the method), compares each with the SFT row case by case (paired bootstrap CI of
the difference and a sign test), and ends with one table, also written as levers.md and
levers.json. Finished steps are skipped on a re-run. The stand-in is a toy: the table exercises
the machinery and ranks nothing about the real task.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from data.appendlog import write_json_atomically
from data.cli_types import COUNT
from data.corpus import REFERENCES_DIR

console = Console()
# method -> (config file, trainer); every config continues the SFT adapter.
METHODS = {
    "orpo": ("tiny-orpo.yaml", "orpo"), "dpo": ("tiny-dpo.yaml", "prefs"),
    "ipo": ("tiny-ipo.yaml", "prefs"), "simpo": ("tiny-simpo.yaml", "prefs"),
    "kto": ("tiny-kto.yaml", "prefs"), "grpo": ("tiny-grpo.yaml", "grpo"),
    "rloo": ("tiny-rloo.yaml", "grpo"), "adversarial": ("tiny-adversarial.yaml", "grpo"),
    "rft": ("tiny-rft.yaml", "rft"),
}
COLUMNS = ("method", "quality (95% CI)", "spec-pass", "coverage", "W/T/L vs gold",
           "diff vs SFT (95% CI)", "sign p", "seconds")


def train_method(method: str, standin: Path, sft: Path, data: Path, pairs: Path, out: Path,
                 max_steps: int | None) -> None:
    from train.config import load_config
    config, trainer = METHODS[method]
    over = {"model_name_or_path": str(standin), "adapter_init": str(sft),
            "output_dir": str(out), "progress": False}
    if trainer in ("orpo", "prefs"):
        over.update(train_file=str(pairs / "train.jsonl"), val_file=str(pairs / "val.jsonl"))
    else:
        over.update(train_file=str(data / "train.jsonl"))
        if trainer == "rft":
            over.update(val_file=str(data / "val.jsonl"))
    if max_steps:
        over["max_steps"] = max_steps
    path = Path("configs") / config
    if trainer == "orpo":
        from train.orpo import ORPORunConfig as Cfg, run_orpo as run
    elif trainer == "prefs":
        from train.prefs import PrefsRunConfig as Cfg, run_prefs as run
    elif trainer == "grpo":
        from rl.grpo import GRPORunConfig as Cfg, run_grpo as run
    else:
        from rl.rft import RFTRunConfig as Cfg, run_rft as run
    run(load_config(Cfg, path, over))


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for method, r in results.items():
        card, cmp_ = r["scorecard"], r.get("vs_sft")
        ci = card.get("headline_ci") or [0.0, 0.0]
        cov = (card.get("dimension_means") or {}).get("coverage")
        diff = "-" if cmp_ is None else (
            f"{cmp_['mean_diff']:+.3f} ({cmp_['diff_ci'][0]:+.2f}..{cmp_['diff_ci'][1]:+.2f})"
            if cmp_["diff_ci"] else f"{cmp_['mean_diff']:+.3f}")
        rows.append([method, f"{card['headline']:.3f} ({ci[0]:.2f}-{ci[1]:.2f})",
                     f"{card['spec_pass_rate']:.0%}", "-" if cov is None else f"{cov:.2f}",
                     f"{card['wins']}/{card['ties']}/{card['losses']}", diff,
                     "-" if cmp_ is None else f"{cmp_['sign_test_p']:.2f}",
                     f"{r['seconds']:.0f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.levers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/levers"))
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {', '.join(METHODS)}")
    ap.add_argument("--max-steps", type=COUNT, default=None,
                    help="cap every method's training steps (a quick look)")
    ap.add_argument("--sft-adapter", type=Path, default=None,
                    help="start from this SFT run on the stand-in instead of training one")
    ap.add_argument("--pairs", type=Path, default=None,
                    help="preference pairs folder to use instead of building one")
    ap.add_argument("--fresh", action="store_true", help="delete earlier outputs first")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; choose from "
              f"{', '.join(METHODS)}", file=sys.stderr)
        return 2
    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    from data.sft import build_sft_data
    from judge.metric import paired_comparison
    from judge.records import read_records
    from eval.run import run_eval
    from train.config import load_config
    from train.sft import SFTRunConfig, run_sft
    from train.standin import build_standin

    standin = build_standin(progress=True)
    data = out / "sft-data"
    pairs, sft = args.pairs or out / "prefs", args.sft_adapter or out / "sft-tiny"
    if not (data / "manifest.json").exists():
        build_sft_data([REFERENCES_DIR], data)
    if not (sft / "run.json").exists():
        console.rule("[bold]tiny SFT (the starting point of every method)")
        run_sft(load_config(SFTRunConfig, "configs/tiny-sft.yaml", {
            "model_name_or_path": str(standin), "train_file": str(data / "train.jsonl"),
            "val_file": str(data / "val.jsonl"), "output_dir": str(sft), "progress": False}))
    if any(METHODS[m][1] in ("orpo", "prefs") for m in methods) \
            and not (pairs / "train.jsonl").exists():
        console.rule("[bold]preference pairs (offline judge)")
        from prefs.build import main as prefs_main
        if prefs_main(["--student-base", str(standin), "--student-adapter", str(sft),
                       "--samples", "2", "--limit", "24", "--max-new-tokens", "400",
                       "--out", str(pairs)]):
            raise SystemExit("prefs.build failed")
    db, results_path = out / "experiments.db", out / "levers.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for method in ["sft", *methods]:
        if method in results:
            console.print(f"[dim]- {method}: already trained and scored, skipped[/dim]")
            continue
        t0, run_dir = time.time(), sft if method == "sft" else out / method
        if method != "sft":
            console.rule(f"[bold]train {method}")
            train_method(method, standin, sft, data, pairs, run_dir, args.max_steps)
        console.rule(f"[bold]score {method} on the ruler")
        summary = run_eval(base=str(standin), adapter=str(run_dir), judge="offline",
                           label=f"levers-{method}", note=f"levers recipe: {method} on the "
                           "stand-in", lever=method, db=db, out_dir=out / "eval" / method,
                           max_new_tokens=400, console=console, progress=False)
        results[method] = {"scorecard": summary["scorecard"], "run_dir": str(run_dir),
                           "experiment_id": summary["experiment_id"],
                           "seconds": time.time() - t0}
        if method != "sft":
            cmp_ = paired_comparison(read_records(out / "eval" / "sft" / "records.jsonl"),
                                     read_records(out / "eval" / method / "records.jsonl"),
                                     label_a="sft", label_b=method)
            results[method]["vs_sft"] = cmp_.to_dict()
        write_json_atomically(results_path, results)
    shown = {m: results[m] for m in ["sft", *methods]}
    judge = shown["sft"]["scorecard"].get("judge")
    table = Table(title=f"every lever on the ruler (judge {judge}; stand-in, a toy)")
    for col in COLUMNS:
        table.add_column(col)
    rows = table_rows(shown)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "levers.md").write_text(f"Judge: {judge}\n\n" + "\n".join(md) + "\n",
                                   encoding="utf-8")
    console.print(f"experiment log {db}; table {out / 'levers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
