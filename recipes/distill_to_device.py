"""The real pipeline: `python -m recipes.distill_to_device --tasks FILE --config configs/recipe.yaml
[--yes] [--out runs/recipe]`.

One-line tasks -> teacher gold (Claude, optionally via Message Batches) -> SFT data -> SFT on the
configured base -> preference pairs judged by the anthropic judge -> ORPO from the SFT adapter ->
base, SFT and ORPO scored on the frozen ruler with the anthropic judge (both orders) -> export
(Apple's afm-text-v7 package when the base is Apple's, else a stand-in conformance package).

Before any request it prints an estimate of API calls, tokens and dollars and asks for a yes on
stdin (`--yes` skips the question; no stdin / end of input aborts). Every stage is resumable: a
finished stage is recognised from its outputs under --out and skipped, distillation resumes task
by task (gold lines are appended and fsynced; answers already paid for come from the response
cache), so running the same command again picks up where it stopped.

Estimate semantics: teacher calls = tasks neither in the gold file nor in the response cache (one
request each; a spec-gate re-ask or an HTTP retry is an extra request). Judge calls are an upper
bound: 30 ruler cases x 3 candidates x 2 orders (swap) plus the preference candidates (gold +
student samples + synthetic negatives per task, x2 with prefs_swap); only candidates that pass the
spec gate and are not in the verdict cache are actually sent.

environment: ANTHROPIC_API_KEY (required, never logged), ANTHROPIC_BASE_URL (optional gateway).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

console = Console()

RULER_CASES = 30          # cases in the frozen ruler (eval/ruler), for the judge-call estimate
EVAL_LABELS = ("base", "sft", "orpo")
# Rough token sizes for the estimate (measured on the planner/judge prompts, not exact).
TEACHER_OUT_TOKENS, TEACHER_IN_TOKENS = 700, 40
JUDGE_OUT_TOKENS = 250


@dataclass
class RecipeConfig:
    teacher_model: str = "claude-sonnet-4-6"
    batch: bool = False                       # Message Batches API: half price, hours of latency
    concurrency: int = 8                      # teacher requests in flight
    poll_interval: float = 30.0               # batch status checks, seconds
    max_attempts: int = 3                     # teacher answers per task before quarantine
    base_model: str = "Qwen/Qwen2.5-3B-Instruct"   # hub id, Apple assets folder, or 'standin'
    sft_config: str = "configs/sft.yaml"
    orpo_config: str = "configs/orpo.yaml"
    prefs_samples: int = 4                    # student samples per task
    prefs_judge: str = "anthropic"            # anthropic | offline | learned:DIR
    prefs_swap: bool = False
    prefs_limit: int | None = None            # only the first N gold tasks
    prefs_max_new_tokens: int = 640
    judge_model: str = "claude-sonnet-4-6"
    judge_concurrency: int = 4
    eval_swap: bool = True
    eval_max_new_tokens: int = 640
    export_name: str = "discovery_planner"
    cache_dir: str | None = None              # response/verdict caches; default <out>/cache
    progress: bool = True


@dataclass
class Estimate:
    tasks: int = 0
    teacher_calls: int = 0
    judge_calls_eval: int = 0
    judge_calls_prefs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    dollars: float | None = 0.0

    @property
    def judge_calls(self) -> int:
        return self.judge_calls_eval + self.judge_calls_prefs

    def text(self) -> str:
        cost = "unknown (model missing from configs/prices.yaml)" if self.dollars is None \
            else f"~${self.dollars:.2f}"
        return (f"estimate: {self.teacher_calls} teacher calls (of {self.tasks} tasks; the rest "
                f"are done or cached), at most {self.judge_calls} judge calls "
                f"({self.judge_calls_prefs} preference + {self.judge_calls_eval} ruler); "
                f"~{self.input_tokens:,} input / ~{self.output_tokens:,} output tokens; {cost}")


@dataclass
class Paths:
    """Where each stage writes under --out (its finished-marker decides whether it is skipped)."""
    out: Path

    gold = property(lambda s: s.out / "gold.jsonl")
    distill_done = property(lambda s: s.out / "gold.done.json")
    sft_data = property(lambda s: s.out / "sft-data")
    sft = property(lambda s: s.out / "sft")
    prefs = property(lambda s: s.out / "prefs")
    orpo = property(lambda s: s.out / "orpo")
    eval = property(lambda s: s.out / "eval")
    db = property(lambda s: s.out / "experiments.db")
    export = property(lambda s: s.out / "export")


def cache_paths(cfg: RecipeConfig, out: Path) -> tuple[Path, Path]:
    d = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    return d / "teacher.sqlite", d / "judge.sqlite"


# ---- the estimate ---------------------------------------------------------------------------
def uncached_teacher_tasks(tasks, cfg: RecipeConfig, p: Paths) -> list:
    """Tasks that will cost a teacher request: not in the gold file and not in the cache."""
    from data.response_cache import ResponseCache
    from data.appendlog import read_records
    from data.teacher import DEFAULT_MAX_TOKENS, as_tasks, conversation, request_key
    done = set()
    if p.gold.exists():
        done = {str(o.get("id")) for _, o in read_records(p.gold) if isinstance(o, dict)}
    teacher_cache, _ = cache_paths(cfg, p.out)
    cache = ResponseCache(teacher_cache) if teacher_cache.exists() else None
    todo = []
    try:
        for t in as_tasks(tasks):
            if t.id in done:
                continue
            params = next(conversation(t, model=cfg.teacher_model, max_attempts=cfg.max_attempts,
                                       max_tokens=DEFAULT_MAX_TOKENS))
            if cache is None or cache.get(request_key(params)) is None:
                todo.append(t)
    finally:
        if cache is not None:
            cache.close()
    return todo


def estimate(tasks, cfg: RecipeConfig, p: Paths) -> Estimate:
    from data.contract import JUDGE_SYSTEM_PROMPT, JUDGE_TOOL, planner_system_prompt
    from prefs.build import PrefsOptions
    from data.prices import PRICES_PATH, load_prices
    from data.teacher import DISCOVERY_TOOL
    est = Estimate(tasks=len(tasks))
    if not p.distill_done.exists():
        est.teacher_calls = len(uncached_teacher_tasks(tasks, cfg, p))
    if cfg.prefs_judge == "anthropic" and not (p.prefs / "manifest.json").exists():
        n = len(tasks) if cfg.prefs_limit is None else min(cfg.prefs_limit, len(tasks))
        per_task = 1 + cfg.prefs_samples + 3 * PrefsOptions.negatives_per_kind
        est.judge_calls_prefs = n * per_task * (2 if cfg.prefs_swap else 1)
    todo_labels = [lb for lb in EVAL_LABELS if not (p.eval / lb / "scorecard.json").exists()]
    est.judge_calls_eval = RULER_CASES * len(todo_labels) * (2 if cfg.eval_swap else 1)
    teacher_prefix = len(planner_system_prompt() + str(DISCOVERY_TOOL)) // 4
    judge_in = len(JUDGE_SYSTEM_PROMPT + str(JUDGE_TOOL)) // 4 + 600   # + two answers
    teacher = {"input_tokens": TEACHER_IN_TOKENS * est.teacher_calls,
               "output_tokens": TEACHER_OUT_TOKENS * est.teacher_calls,
               "cache_creation_input_tokens": teacher_prefix if est.teacher_calls else 0,
               "cache_read_input_tokens": teacher_prefix * est.teacher_calls}
    judge = {"input_tokens": judge_in * est.judge_calls,
             "output_tokens": JUDGE_OUT_TOKENS * est.judge_calls}
    est.input_tokens = sum(v for k, v in teacher.items() if k != "output_tokens") \
        + judge["input_tokens"]
    est.output_tokens = teacher["output_tokens"] + judge["output_tokens"]
    if not PRICES_PATH.exists():
        est.dollars = None
        return est
    prices = load_prices()
    t_cost = prices.cost(cfg.teacher_model, teacher, batch=cfg.batch)
    j_cost = prices.cost(cfg.judge_model, judge)
    est.dollars = None if t_cost is None or j_cost is None else t_cost + j_cost
    return est


def confirm(est: Estimate, yes: bool) -> bool:
    console.print(est.text())
    if yes or (est.teacher_calls == 0 and est.judge_calls == 0):
        return True
    try:
        answer = input("Spend this? [y/N] ")
    except EOFError:
        console.print("[red]aborted:[/red] no answer on stdin; pass --yes to run without asking")
        return False
    if answer.strip().lower() not in ("y", "yes"):
        console.print("aborted: nothing was spent")
        return False
    return True


# ---- the stages -----------------------------------------------------------------------------
def _stage(name: str, done: bool, fn) -> None:
    if done:
        console.print(f"[dim]- {name}: already done, skipped[/dim]")
        return
    console.rule(f"[bold]{name}")
    t0 = time.time()
    fn()
    console.print(f"[dim]{name}: {time.time() - t0:.0f}s[/dim]")


def _is_apple_base(base: str) -> bool:
    try:
        from train.afm import is_afm_assets
    except ImportError:
        return False
    return Path(base).is_dir() and is_afm_assets(base)


def run_recipe(tasks, cfg: RecipeConfig, out: Path, *, yes: bool = False) -> dict:
    """Run (or resume) every stage; returns estimate, distill, scores, package and spent."""
    from data.redaction import api_key_from_env
    from train.models import resolve_base
    api_key_from_env()                       # a missing key is reported before anything else
    out.mkdir(parents=True, exist_ok=True)
    p = Paths(out)
    teacher_cache, judge_cache = cache_paths(cfg, out)
    est = estimate(tasks, cfg, p)
    result: dict = {"estimate": asdict(est), "distill": None, "scores": {}, "package": None}
    if not confirm(est, yes):
        result["aborted"] = True
        return result
    base = resolve_base(cfg.base_model)
    answered_before = (_answers_in(teacher_cache), _answers_in(judge_cache))

    def distill():
        from data.appendlog import write_json_atomically
        from data.distill import distill_tasks
        s = distill_tasks(tasks, p.gold, model=cfg.teacher_model, concurrency=cfg.concurrency,
                          batch=cfg.batch, cache_path=teacher_cache,
                          max_attempts=cfg.max_attempts, poll_interval=cfg.poll_interval,
                          progress=cfg.progress)
        result["distill"] = asdict(s)
        console.print(s.text())
        if s.interrupted or s.failed:
            raise SystemExit("distillation did not finish; run the same command again to resume")
        write_json_atomically(p.distill_done, asdict(s))

    _stage("teacher distillation", p.distill_done.exists(), distill)

    def sft_data():
        from data.sft import build_sft_data
        rep = build_sft_data([p.gold], p.sft_data)
        console.print(f"{rep.n_train} train / {rep.n_val} validation examples")

    _stage("SFT data", (p.sft_data / "manifest.json").exists(), sft_data)

    def sft():
        from train.config import load_config
        from train.sft import SFTRunConfig, run_sft
        run_sft(load_config(SFTRunConfig, cfg.sft_config, {
            "model_name_or_path": base, "train_file": str(p.sft_data / "train.jsonl"),
            "val_file": str(p.sft_data / "val.jsonl"), "output_dir": str(p.sft),
            "progress": cfg.progress}))

    _stage("SFT", (p.sft / "run.json").exists(), sft)

    def prefs():
        from prefs.build import main as prefs_main
        argv = ["--gold", str(p.gold), "--student-base", base, "--student-adapter", str(p.sft),
                "--samples", str(cfg.prefs_samples), "--max-new-tokens",
                str(cfg.prefs_max_new_tokens), "--judge", cfg.prefs_judge, "--out", str(p.prefs)]
        if cfg.prefs_judge == "anthropic":
            argv += ["--judge-model", cfg.judge_model, "--judge-cache", str(judge_cache),
                     "--judge-concurrency", str(cfg.judge_concurrency)]
            argv += ["--judge-swap"] if cfg.prefs_swap else []
        if cfg.prefs_limit is not None:
            argv += ["--limit", str(cfg.prefs_limit)]
        if prefs_main(argv):
            raise SystemExit("prefs.build failed (see the error above)")

    _stage("preference pairs", (p.prefs / "manifest.json").exists(), prefs)

    def orpo():
        from train.config import load_config
        from train.orpo import ORPORunConfig, run_orpo
        run_orpo(load_config(ORPORunConfig, cfg.orpo_config, {
            "model_name_or_path": base, "adapter_init": str(p.sft),
            "train_file": str(p.prefs / "train.jsonl"), "val_file": str(p.prefs / "val.jsonl"),
            "output_dir": str(p.orpo), "progress": cfg.progress}))

    _stage("ORPO", (p.orpo / "run.json").exists(), orpo)

    for label, adapter, lever in (("base", None, "inference"), ("sft", p.sft, "sft"),
                                  ("orpo", p.orpo, "orpo")):
        where = p.eval / label

        def score(label=label, adapter=adapter, lever=lever, where=where):
            from eval.run import run_eval
            shutil.rmtree(where, ignore_errors=True)   # a stopped eval: its verdicts are cached
            run_eval(base=base, adapter=str(adapter) if adapter else None, pipeline="single",
                     judge="anthropic", swap=cfg.eval_swap, label=f"recipe-{label}",
                     note=f"distill_to_device: {label} on {cfg.base_model}", lever=lever,
                     db=p.db, out_dir=where, max_new_tokens=cfg.eval_max_new_tokens,
                     judge_options={"model": cfg.judge_model, "cache_path": str(judge_cache),
                                    "concurrency": cfg.judge_concurrency},
                     progress=cfg.progress, console=console)

        _stage(f"score {label} on the ruler", (where / "scorecard.json").exists(), score)
        result["scores"][label] = json.loads((where / "scorecard.json").read_text())

    apple = _is_apple_base(base)
    pkg = p.export / f"{cfg.export_name}.fmadapter"

    def export():
        from export.fmadapter import main as export_main
        argv = ["--adapter", str(p.orpo), "--name", cfg.export_name, "--out", str(p.export),
                "--force"] + ([] if apple else ["--allow-stand-in"])
        if export_main(argv + ([] if cfg.progress else ["--quiet"])):
            raise SystemExit("export failed (see the error above)")

    _stage("export (afm-text-v7)" if apple else "export (stand-in conformance package)",
           pkg.exists(), export)
    result["package"] = str(pkg)
    for label in EVAL_LABELS:
        card = result["scores"][label]
        console.print(f"{label:5s} quality {card['headline']:.3f}  spec-pass "
                      f"{card['spec_pass_rate']:.0%}  W/T/L {card['wins']}/{card['ties']}/"
                      f"{card['losses']}")
    console.print(f"package: {pkg}")
    # What was paid for in this run (answers newly cached) next to what was estimated, so the
    # estimate can be checked against the bill; judge calls are fewer than the bound when some
    # candidates fail the spec gate (those are never judged).
    spent = {"teacher_calls": _answers_in(teacher_cache) - answered_before[0],
             "judge_calls": _answers_in(judge_cache) - answered_before[1]}
    result["spent"] = spent
    console.print(f"spent: {spent['teacher_calls']} teacher calls (estimated "
                  f"{est.teacher_calls}), {spent['judge_calls']} judge calls (estimated at most "
                  f"{est.judge_calls})")
    return result


def _answers_in(cache_path: Path) -> int:
    from data.response_cache import ResponseCache
    if not Path(cache_path).exists():
        return 0
    cache = ResponseCache(cache_path)
    try:
        return len(cache)
    finally:
        cache.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.distill_to_device", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", required=True, type=Path,
                    help="one-line tasks: text (one per line) or JSONL with id/input")
    ap.add_argument("--config", type=Path, default=Path("configs/recipe.yaml"),
                    help="recipe config YAML (default %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("runs/recipe"),
                    help="where every stage writes (default %(default)s)")
    ap.add_argument("--yes", "-y", action="store_true", help="do not ask before spending money")
    args = ap.parse_args(argv)
    from data.redaction import MissingKeyError, redact
    from data.contract import ContractError
    from data.corpus import read_tasks
    from judge.judges import check_judge_name
    from train.config import ConfigError, load_config
    try:
        cfg = load_config(RecipeConfig, args.config)
        try:
            check_judge_name(cfg.prefs_judge)
        except ValueError as e:
            raise ConfigError(f"{args.config}: key 'prefs_judge': {e}") from None
        tasks = read_tasks(args.tasks)
        res = run_recipe(tasks, cfg, args.out, yes=args.yes)
    except (MissingKeyError, ConfigError, ContractError, FileNotFoundError, ValueError) as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    return 1 if res.get("aborted") else 0


if __name__ == "__main__":
    sys.exit(main())
