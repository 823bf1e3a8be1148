"""The offline quick start (`make demo`): `python -m recipes.quickstart [--fresh] [--out runs/quickstart]`.

Everything runs on the embedded stand-in, with no network: build the stand-in, turn the bundled
hand-written references into SFT data, train the tiny SFT adapter, and show what it answers for
three ruler inputs next to the untrained base. Finished steps are skipped on a re-run (their
outputs are on disk); `--fresh` starts over.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from data.contract import spec_violations
from data.corpus import REFERENCES_DIR, ruler_cases

console = Console()


def _step(name: str, done: bool, fn):
    """Run fn unless its output is already there; returns (seconds, skipped)."""
    if done:
        console.print(f"[dim]- {name}: already done, skipped[/dim]")
        return 0.0, True
    console.rule(f"[bold]{name}")
    t0 = time.time()
    fn()
    return time.time() - t0, False


def _show_answers(standin: Path, adapter: Path, n: int = 3) -> None:
    from eval.generate import generate_answers
    from train.models import load_with_adapter

    cases = ruler_cases()[:n]
    inputs = [c.input for c in cases]
    for label, adapter_dir in (("untrained base", None), ("tiny SFT adapter", adapter)):
        model, tok, _ = load_with_adapter(str(standin), adapter_dir)
        for case, gen in zip(cases, generate_answers(model, tok, inputs, max_new_tokens=400)):
            console.rule(f"{label} · {case.id}: {case.input}")
            if gen.result is None:
                console.print(f"[red]no usable answer[/red] ({gen.error}); raw output starts: "
                              f"{gen.text[:160]!r}")
                continue
            bad = spec_violations(gen.result)
            console.print(f"[bold]{gen.result.task_title}[/bold] — {gen.result.task_description}")
            for i, q in enumerate(gen.result.questions, 1):
                console.print(f"  {i}. {q.title}")
            console.print("[green]spec gate: pass[/green]" if not bad
                          else f"[yellow]spec gate: {'; '.join(bad)}[/yellow]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--fresh", action="store_true", help="delete earlier outputs and start over")
    args = ap.parse_args(argv)
    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    rows = []

    from train.standin import build_standin
    holder: dict = {}
    secs, skipped = _step("stand-in base", False,
                          lambda: holder.update(standin=build_standin(progress=True)))
    standin = holder["standin"]
    rows.append(("stand-in base", str(standin), secs))

    data_dir = out / "sft-data"

    def make_data():
        from data.sft import build_sft_data
        rep = build_sft_data([REFERENCES_DIR], data_dir)
        console.print(f"{rep.n_train} train / {rep.n_val} validation examples")

    secs, _ = _step("SFT data", (data_dir / "manifest.json").exists(), make_data)
    rows.append(("SFT data", str(data_dir), secs))

    sft_dir = out / "sft-tiny"

    def train_sft():
        from train.config import load_config
        from train.sft import SFTRunConfig, run_sft
        cfg = load_config(SFTRunConfig, "configs/tiny-sft.yaml", {
            "model_name_or_path": str(standin), "train_file": str(data_dir / "train.jsonl"),
            "val_file": str(data_dir / "val.jsonl"), "output_dir": str(sft_dir)})
        run_sft(cfg)

    secs, _ = _step("tiny SFT", (sft_dir / "run.json").exists(), train_sft)
    rows.append(("tiny SFT adapter", str(sft_dir), secs))

    console.rule("[bold]what the adapter answers (greedy) for three ruler inputs")
    _show_answers(standin, sft_dir)

    table = Table(title=f"quick start finished in {time.time() - t_all:.0f}s")
    for col in ("step", "output", "seconds"):
        table.add_column(col)
    for name, path, secs in rows:
        table.add_row(name, path, f"{secs:.0f}" if secs else "cached")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
