"""Score a base model (plus an optional adapter) on the frozen ruler and log the experiment.

  python -m eval.run --base PATH_OR_ID [--adapter RUN_DIR] --pipeline single|overgen-prune|retrieval
                     --judge offline|anthropic --label L --note "hypothesis"
                     [--lever inference|sft|orpo|...] [--db runs/experiments.db]
                     [--out-dir runs/eval/<label>] [--max-new-tokens N] [--batch-size N]
                     [--swap] [--samples K] [--k N] [--pool FILE]
                     [--prompt-from RUN_DIR] [--field-map CANONICAL=THEIRS,...]

One command for the research loop: verify the ruler (a ruler that does not match its manifest is
refused), generate every ruler case greedily through the chosen pipeline, gate, judge, score,
print the scorecard with the running best of this ruler and judge and a paired test against it,
write per-case results, and append one row to the experiment log (eval.log).

Prompt (eval.run_prompt): an adapter is asked with the prompt it was trained on: the
contract's, or, when its training data brought its own instructions, the template recorded in
its run.json (--prompt-from RUN_DIR takes another run's). Answers are read under every known key
spelling plus the run's field_map (or --field-map).

Leak check (eval.adapter_check): an adapter's run.json lists every training input (data.inputs).
If one equals or nearly equals a ruler task, or run.json cannot show the training data, the
experiment is still scored but logged `invalid` with the reason, and it can never become the
running best. The log rows themselves are built in eval.experiment.

Files written to the output folder: cases.json (per case: input, gold, raw output, candidate,
spec violations, verdict, notes, quality, pipeline details), records.jsonl (judged records, the
format eval.score reads), scorecard.json, experiment.json (log id, status, comparison).

Exit status: 0 logged kept or discarded; 1 the ruler does not match its manifest; 2 bad
arguments; 3 logged invalid (leak or unverifiable training data).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from data.appendlog import write_text_atomically
from data.cli_types import COUNT
from dataclasses import replace

from data.contract import ContractError, FieldMapError, parse_field_map
from eval.adapter_check import adapter_hash, leak_reason
from eval.experiment import case_entries, log_experiment
from eval.log import DEFAULT_DB
from judge.judges import judge_name
from judge.metric import render_comparison, render_scorecard, scorecard
from eval.pipelines import DEFAULT_K, PIPELINES, PipelineOptions, load_pool, run_pipeline
from eval.ruler import RulerError, load_ruler
from eval.run_prompt import RunPrompt, prompt_of_run, run_prompt

ENGINES = ("torch", "mlx")

LEVERS = ("inference", "prompt", "pipeline", "sft", "orpo", "dpo", "ipo", "simpo", "kto", "grpo",
          "rloo", "rft", "data", "other")




def judge_identity(judge, swap: bool, samples: int) -> str:
    """The name bests are kept per: the judge's own name plus the options that change scores."""
    return judge.name + ("+swap" if swap else "") + (f"+samples{samples}" if samples > 1 else "")


def build_judge(name: str, *, swap: bool = False, samples: int = 1, options: dict | None = None,
                progress: bool = True):
    from judge.judges import get_judge
    options = dict(options or {})
    if name == "offline":
        if swap or samples != 1:
            raise ValueError("--swap and --samples apply to the anthropic judge only (the offline "
                             "judge is deterministic)")
        return get_judge("offline", **options)
    if name == "anthropic":
        from data.redaction import MissingKeyError  # lazy: needs the anthropic SDK
        try:
            return get_judge("anthropic", swap=swap, samples=samples, progress=progress,
                             **options)
        except MissingKeyError as e:
            raise ValueError(str(e)) from None
    return get_judge(name, swap=swap, samples=samples, **options)   # learned:DIR


def default_out_dir(label: str) -> Path:
    """runs/eval/<label>, or <label>-2, -3 ... when an earlier run used that label."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label) or "run"
    base = Path("runs") / "eval" / safe
    out, n = base, 1
    while (out / "cases.json").exists():
        n += 1
        out = base.with_name(f"{safe}-{n}")
    return out


def run_eval(*, base: str, adapter=None, pipeline: str = "single", judge: str = "offline",
             label: str, note: str, lever: str = "inference", db=DEFAULT_DB, out_dir=None,
             max_new_tokens: int = 640, batch_size: int = 16, swap: bool = False,
             samples: int = 1, k: int = DEFAULT_K, pool=None, ruler_dir=None,
             judge_options: dict | None = None, device: str = "auto", precision: str = "fp32",
             engine: str = "torch", kv_quant: str = "off", prompt_from=None,
             field_map: dict | None = None, guided: bool = False,
             progress: bool = True, console=None, quiet: bool = False) -> dict:
    """Generate, gate, judge, score, write and log one experiment; returns its summary dict.

    The prompt is the one the adapter was trained with (eval.run_prompt: the contract's, or
    the training data's own recorded in its run.json), or that of the run `prompt_from`;
    `field_map` adds key names to read answers under (default: the adapter run's).

    Raises RulerError on a ruler that does not match its manifest, ValueError/FileNotFoundError
    on bad arguments (before anything is generated).
    """
    from rich.console import Console

    from judge.cli import judge_candidates
    from train.models import load_with_adapter, pick_device
    console = console or Console(quiet=quiet)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    if not label or not note:
        raise ValueError("every experiment needs a --label and a --note (its hypothesis)")
    cases, info = load_ruler(verify=True, ruler_dir=ruler_dir)
    ruler = {"version": info.version, "hash": info.hash}
    run_json, invalid = (None, None)
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder "
                                    "(adapter_config.json is missing)")
        run_json, invalid = leak_reason(adapter, cases)
    if prompt_from:
        rp = run_prompt(prompt_from)
    elif run_json is not None:
        rp = prompt_of_run(run_json, adapter)
    else:
        rp = RunPrompt()
    if field_map:
        rp = replace(rp, field_map=dict(field_map))
    judge_obj = build_judge(judge, swap=swap, samples=samples, options=judge_options,
                            progress=progress)
    pool_cases = load_pool(pool) if pipeline == "retrieval" else None
    opts = PipelineOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, k=k,
                           pool=pool_cases, progress=progress,
                           pool_source=str(pool) if pool else "bundled reference answers",
                           template=rp.template, field_map=rp.field_map or None,
                           guided=guided)
    if rp.template is not None and pipeline != "single":
        raise ValueError(f"{rp.origin}: trained on its own prompt (sha256 {rp.sha256[:12]}); "
                         f"pipeline {pipeline} rewrites the contract's prompt, so score it with "
                         "--pipeline single")
    out = Path(out_dir) if out_dir else default_out_dir(label)
    if out_dir and (out / "cases.json").exists():
        raise ValueError(f"{out} already holds an evaluation; choose another --out-dir or --label")

    dev = pick_device(device) if engine == "torch" else "mlx"
    trained_on = (run_json or {}).get("base_model") or {}
    try:
        if engine == "mlx":
            from train.mlx.generate import load_mlx_engine
            model, tokenizer, base_info = load_mlx_engine(base, adapter, precision=precision,
                                                          kv_quant=kv_quant)
        else:
            model, tokenizer, base_info = load_with_adapter(base, adapter, precision=precision,
                                                            device=dev, kv_quant=kv_quant)
    except RuntimeError as e:   # typically a shape mismatch: the adapter belongs to another base
        first = str(e).strip().splitlines()[:2]
        raise ValueError(f"cannot load adapter {adapter} on base {base}: {' '.join(first)}"
                         + (f" (the adapter was trained on {trained_on.get('name_or_path')}, "
                            f"identity {str(trained_on.get('identity'))[:12]})"
                            if trained_on else "")) from None
    if trained_on.get("identity") and trained_on["identity"] != base_info["identity"]:
        raise ValueError(f"{adapter} was trained on base {trained_on.get('name_or_path')} "
                         f"(identity {trained_on['identity'][:12]}), not on {base} (identity "
                         f"{base_info['identity'][:12]}); pass the base it was trained on")
    gens = run_pipeline(pipeline, model, tokenizer, [c.input for c in cases], opts)
    candidates = {c.id: (g.result, g.error) for c, g in zip(cases, gens)}
    records = judge_candidates(cases, candidates, judge_obj, ruler=ruler, experiment=label)
    judge_name = judge_identity(judge_obj, swap, samples)
    card = scorecard(records, label=label, judge=judge_name, ruler=ruler)

    config = {"base": base_info, "adapter": str(adapter) if adapter else None,
              "adapter_hash": adapter_hash(adapter) if adapter else None,
              "generation": opts.describe(pipeline), "batch_size": batch_size, "device": dev,
              "precision": precision, "engine": engine, "kv_quant": kv_quant,
              "prompt_hash": rp.sha256, "judge": judge_name,
              "judge_prompt_hash": judge_obj.prompt_hash, "judge_options": judge_options or {}}
    # Batch size, device, engine, judge concurrency and cache location do not change the numbers
    # (greedy outputs are batch- and engine-invariant on purpose, tested); they stay out of the
    # hash, and so does kv_quant while off, so earlier experiments keep their hashes.
    if rp.source != "contract" or rp.field_map:
        config["prompt"] = rp.describe()   # only then, so contract-prompt runs keep their hashes
    hashed = {k: v for k, v in config.items() if k not in ("batch_size", "device", "engine")}
    if kv_quant == "off":
        hashed.pop("kv_quant")
    hashed["judge_options"] = {k: v for k, v in (judge_options or {}).items()
                               if k not in ("concurrency", "cache_path")}
    config_hash = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()
                                 ).hexdigest()
    entries = case_entries(cases, gens, records)
    out.mkdir(parents=True, exist_ok=True)
    from judge.records import write_records
    write_records(out / "records.jsonl", records)
    write_text_atomically(out / "cases.json", json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(out / "scorecard.json", json.dumps(card.to_dict(), indent=2) + "\n")

    from train.common import git_commit
    columns = {
        "label": label, "note": note, "lever": lever, "base_model": base_info["name_or_path"],
        "base_identity": base_info["identity"], "adapter": str(adapter) if adapter else None,
        "adapter_hash": config["adapter_hash"],
        "adapter_run_id": (run_json or {}).get("run_id"), "pipeline": pipeline,
        "config_json": json.dumps(config, default=str), "config_hash": config_hash,
        "judge_prompt_hash": judge_obj.prompt_hash, "prompt_hash": rp.sha256,
        "git_commit": git_commit(), "out_dir": str(out),
    }
    extras = [{"raw_output": e["raw_output"], "pipeline": e["pipeline"]} for e in entries]
    exp, best = log_experiment(db, records, card, columns, invalid_reason=invalid,
                               case_extras=extras)
    comparison = json.loads(exp.row["comparison_json"] or "null")
    summary = {
        "experiment_id": exp.id, "status": exp.row["status"], "reason": invalid,
        "label": label, "judge": judge_name, "ruler": ruler, "scorecard": card.to_dict(),
        "qualities": {c.id: q for c, q in zip(cases, card.qualities)},
        "best_before": ({"id": best.id, "label": best.label, "headline": best.headline}
                        if best else None),
        "comparison": comparison, "out_dir": str(out), "db": str(db),
        "config_hash": config_hash, "cases": entries,
    }
    write_text_atomically(out / "experiment.json", json.dumps(
        {k: v for k, v in summary.items() if k != "cases"}, indent=2, default=str) + "\n")
    _print_summary(console, card, judge, summary)
    return summary


def _print_summary(console, card, judge: str, s: dict) -> None:
    from judge.judges.offline import PROXY_NOTICE
    from judge.metric import PairedComparison
    render_scorecard(card, console, notice=PROXY_NOTICE if judge == "offline" else None)
    best = s["best_before"]
    if best is None:
        console.print("Running best: none yet for this ruler and judge.")
    else:
        console.print(f"Running best before this run: #{best['id']} {best['label']} "
                      f"{best['headline']:.3f}")
        c = s["comparison"]
        if c and "error" not in c:
            c = dict(c, diff_ci=tuple(c["diff_ci"]) if c["diff_ci"] else None)
            render_comparison(PairedComparison(**c), console)
        elif c:
            console.print(f"[yellow]paired comparison not possible: {c['error']}[/yellow]")
    status = s["status"]
    style = {"kept": "green", "discarded": "yellow", "invalid": "red"}[status]
    why = {"kept": "new running best", "discarded": "does not beat the running best",
           "invalid": s["reason"] or ""}[status]
    console.print(f"[{style}]experiment #{s['experiment_id']} logged as {status.upper()}[/{style}]"
                  f" ({why}) in {s['db']}; per-case results in {s['out_dir']}")


def main(argv=None) -> int:
    from train.guided import GuidedUnavailable

    p = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True,
                   help="base model: hub id, local folder, Apple assets folder, or an alias: "
                        "smollm2-135m (SmolLM2-135M-Instruct) | toy (the tiny stand-in)")
    p.add_argument("--adapter", default=None, help="training run folder (PEFT adapter + run.json)")
    p.add_argument("--pipeline", choices=PIPELINES, default="single")
    p.add_argument("--judge", type=judge_name, default="offline",
                   help="offline (deterministic proxy), anthropic (Sonnet) or learned:DIR")
    p.add_argument("--label", required=True, help="short name of this experiment")
    p.add_argument("--note", required=True, help="the hypothesis this experiment tests")
    p.add_argument("--lever", default="inference",
                   help=f"what was changed: {', '.join(LEVERS)} (free text allowed)")
    p.add_argument("--db", default=str(DEFAULT_DB), help=f"experiment log (default {DEFAULT_DB})")
    p.add_argument("--out-dir", default=None, help="per-case results (default runs/eval/<label>)")
    p.add_argument("--max-new-tokens", type=COUNT, default=640)
    p.add_argument("--batch-size", type=COUNT, default=16)
    p.add_argument("--swap", action="store_true", help="anthropic: also judge position-swapped")
    p.add_argument("--samples", type=COUNT, default=1, help="anthropic: judge K times and average")
    p.add_argument("--judge-model", default=None, help="anthropic: judge model")
    p.add_argument("--judge-cache", default=None, help="anthropic: verdict cache (SQLite)")
    p.add_argument("--judge-concurrency", type=COUNT, default=None,
                   help="anthropic: parallel requests")
    p.add_argument("--weights", default=None, help="offline: fitted weights (eval.calibrate)")
    p.add_argument("--offline-backend", choices=("embedding", "lexical"), default=None,
                   help="offline: similarity backend (default embedding: bundled MiniLM)")
    p.add_argument("--k", type=COUNT, default=DEFAULT_K, help="retrieval: demonstrations per case")
    p.add_argument("--pool", default=None,
                   help="retrieval: gold/SFT JSONL file or folder (default: bundled references)")
    p.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch (transformers) | mlx (native Apple silicon; same greedy outputs)")
    p.add_argument("--kv-quant", choices=("off", "device"), default="off",
                   help="Apple's base: fake-quantise K/V as the device runtime does")
    p.add_argument("--precision", default="fp32", help="fp32 (default, repeatable) | bf16 | fp16")
    p.add_argument("--ruler-dir", default=None, help="ruler folder (default: eval/ruler)")
    p.add_argument("--prompt-from", default=None, metavar="RUN_DIR",
                   help="use the prompt that run was trained with (default: the adapter's own, "
                        "recorded in its run.json; the contract's prompt without an adapter)")
    p.add_argument("--field-map", default=None, metavar="CANONICAL=THEIRS,...",
                   help="key names the answers use beyond the known aliases (default: the "
                        "adapter run's field_map)")
    p.add_argument("--guided", action="store_true",
                   help="decode under the contract's JSON schema (exactly 7 questions), as the "
                        "device runtime does for a @Generable type (needs llguidance)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.samples < 1 or args.max_new_tokens < 1 or args.batch_size < 1 or args.k < 0:
        p.error("--samples, --max-new-tokens and --batch-size must be >= 1, --k >= 0")
    opts: dict = {}
    if args.judge == "offline":
        if args.weights:
            opts["weights_path"] = args.weights
        if args.offline_backend:
            opts["backend"] = args.offline_backend
        if args.judge_model or args.judge_cache or args.judge_concurrency:
            p.error("--judge-model, --judge-cache and --judge-concurrency apply to the anthropic "
                    "judge only")
    else:
        if args.weights or args.offline_backend:
            p.error("--weights and --offline-backend apply to the offline judge only")
        opts.update({k: v for k, v in (("model", args.judge_model),
                                       ("cache_path", args.judge_cache),
                                       ("concurrency", args.judge_concurrency)) if v})
    try:
        fmap = parse_field_map(args.field_map)
    except FieldMapError as e:
        p.error(f"--field-map: {e}")
    try:
        s = run_eval(base=args.base, adapter=args.adapter, pipeline=args.pipeline,
                     judge=args.judge, label=args.label, note=args.note, lever=args.lever,
                     db=args.db, out_dir=args.out_dir, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, swap=args.swap, samples=args.samples, k=args.k,
                     pool=args.pool, ruler_dir=args.ruler_dir, judge_options=opts,
                     device=args.device, precision=args.precision, engine=args.engine,
                     kv_quant=args.kv_quant, prompt_from=args.prompt_from, field_map=fmap,
                     guided=args.guided, progress=not args.no_progress)
    except RulerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, ContractError, GuidedUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 3 if s["status"] == "invalid" else 0


if __name__ == "__main__":
    sys.exit(main())
