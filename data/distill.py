"""Teacher distillation: ask Claude for the gold answer to each one-line task.

    python -m data.distill --tasks tasks.txt --out gold.jsonl [--model claude-sonnet-4-6]
                           [--concurrency 8] [--batch] [--cache PATH] [--quarantine PATH]

This is the only stage that costs money, so it never pays twice (content-addressed cache, and
tasks already in the output are skipped), never loses a row (append + fsync per line; a torn last
line from a kill -9 is truncated on restart) and never lets a malformed answer into training
data (every answer passes data.contract.spec_violations; a failing one is retried with the
specific error fed back, then quarantined with the reason). `distill_tasks()` is the library
entry point reused by `eval.ruler build` and the recipes.
"""
from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from data.anthropic_client import (
    DEFAULT_CACHE_PATH, DEFAULT_MODEL, ClaudeAPIError, ClaudeClient, ToolReply,
)
from data.cli_types import COUNT, NON_NEGATIVE, POSITIVE, number
from data.api_retry import RetryPolicy
from data.concurrency import run_concurrently
from data.redaction import MissingKeyError, api_key_from_env, redact
from data.response_cache import now_iso
from data.appendlog import AppendLog, read_records, rewrite_atomically
from data.contract import PROMPT_HASH, ContractError, planner_system_prompt
from data.prices import USAGE_FIELDS, add_usage
from data.teacher import (  # noqa: F401  (DISCOVERY_TOOL, request_key: used by tests/recipes)
    DEFAULT_MAX_TOKENS, DISCOVERY_TOOL, KIND, TaskResult, TaskSpec, as_tasks, conversation,
    request_key,
)

def _provenance(res: TaskResult, model: str) -> dict:
    usage = {k: 0 for k in USAGE_FIELDS}
    for r in res.replies:
        usage = add_usage(usage, r.usage)
    last = res.replies[-1] if res.replies else None
    prov = {"teacher_model": model, "response_model": last.model if last else None,
            "prompt_hash": PROMPT_HASH, "request_id": last.request_id if last else None,
            "request_ids": [r.request_id for r in res.replies], "usage": usage,
            "attempts": res.attempts, "cached": res.from_cache, "timestamp": now_iso()}
    if last and last.batch_id:
        prov["batch_id"] = last.batch_id
    return prov


def output_record(res: TaskResult, model: str) -> dict:
    return {"id": res.task.id, "input": res.task.input, "gold": res.detail.to_dict("camel"),
            "source": f"teacher:{model}", "provenance": _provenance(res, model)}


def quarantine_record(res: TaskResult, model: str) -> dict:
    last = res.replies[-1] if res.replies else None
    return {"id": res.task.id, "input": res.task.input, "kind": res.status,
            "reason": redact(res.detail), "attempts": res.attempts,
            "last_answer": last.tool_input if last else None, "source": f"teacher:{model}",
            "provenance": _provenance(res, model)}


# ---- the run ------------------------------------------------------------------------------
@dataclass
class DistillSummary:
    total: int = 0
    skipped: int = 0            # already in the output (or quarantined) before this run
    written: int = 0            # new gold lines this run
    cached: int = 0             # ... of which answered entirely from the cache (no request)
    quarantined: int = 0        # spec-gate failures and refusals (quarantine file)
    failed: int = 0             # API errors after retries (quarantine file, retried next run)
    requests: int = 0           # HTTP requests sent, retries included
    usage: dict = field(default_factory=dict)
    cost_usd: float = 0.0
    cost_text: str = "$0.0000"
    interrupted: bool = False
    out_path: str = ""
    quarantine_path: str = ""

    def text(self) -> str:
        u = self.usage
        lines = [f"distill: {self.total} tasks: {self.written} written ({self.cached} from cache), "
                 f"{self.skipped} skipped (done or quarantined before), "
                 f"{self.quarantined} quarantined, {self.failed} failed",
                 f"  requests {self.requests}; tokens in {u.get('input_tokens', 0)}, out "
                 f"{u.get('output_tokens', 0)}, cache write {u.get('cache_creation_input_tokens', 0)}"
                 f", cache read {u.get('cache_read_input_tokens', 0)}; cost {self.cost_text}",
                 f"  output: {self.out_path}"]
        if self.quarantined or self.failed:
            lines.append(f"  quarantine: {self.quarantine_path} (reasons inside; failed tasks "
                         "are retried on the next run)")
        if self.interrupted:
            lines.append("  interrupted: run the same command again to resume")
        return "\n".join(lines)


def default_quarantine_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".quarantine.jsonl")


def batch_state_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".batch.json")


def _prepare_outputs(out_path: Path, quarantine_path: Path, retry_quarantined: bool,
                     task_ids: set[str]) -> tuple[dict[str, str], set[str], set[str]]:
    """Ids already done, ids kept in quarantine, ids whose quarantine entry is dropped because
    this run tries them again (API failures always; everything with --retry-quarantined)."""
    AppendLog(out_path).close()           # creates the file and repairs a torn tail
    AppendLog(quarantine_path).close()
    done: dict[str, str] = {}
    for where, obj in read_records(out_path):
        if not isinstance(obj, dict) or "id" not in obj:
            raise ContractError(f"{where}: output line has no 'id'")
        done[str(obj["id"])] = " ".join(str(obj.get("input", "")).split())
    keep, retry, kept_records = set(), set(), []
    for where, obj in read_records(quarantine_path):
        qid = str(obj.get("id")) if isinstance(obj, dict) else None
        if qid is None or qid in done:
            continue
        if qid in task_ids and (retry_quarantined or obj.get("kind") == "failed"):
            retry.add(qid)
        elif qid not in keep:
            keep.add(qid)
            kept_records.append(obj)
    if retry:
        rewrite_atomically(quarantine_path, kept_records)
    return done, keep, retry


def _check_resume(done: dict[str, str], specs: list[TaskSpec], out_path: Path) -> None:
    """Skipping by id is only right if the id still means the same task."""
    for t in specs:
        if t.id in done and done[t.id] != " ".join(t.input.split()):
            raise ContractError(
                f"{out_path}: id {t.id!r} is already there for a different input "
                f"({done[t.id]!r}, now {t.input!r}); ids of text task files are line numbers, "
                "so use a JSONL task file with stable ids, or a new --out")


class _Run:
    """Shared state of one distill run: writers, counters, progress."""

    def __init__(self, client: ClaudeClient, model: str, out: AppendLog, quarantine: AppendLog,
                 summary: DistillSummary, bar):
        self.client, self.model, self.out, self.quarantine = client, model, out, quarantine
        self.summary, self.bar = summary, bar
        self.lock = threading.Lock()

    def finish(self, res: TaskResult) -> None:
        if res.status == "ok":
            self.out.append(output_record(res, self.model))
        else:
            self.quarantine.append(quarantine_record(res, self.model))
        with self.lock:
            s = self.summary
            if res.status == "ok":
                s.written += 1
                s.cached += res.from_cache
            elif res.status == "failed":
                s.failed += 1
            else:
                s.quarantined += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{self.client.meter.cost_text()} "
                                     f"req={self.client.meter.requests}", refresh=False)


def _run_sync_task(task: TaskSpec, client: ClaudeClient, *, model: str, max_attempts: int,
                   max_tokens: int, fresh: bool) -> TaskResult:
    gen = conversation(task, model=model, max_attempts=max_attempts, max_tokens=max_tokens)
    replies: list[ToolReply] = []
    try:
        params = next(gen)
        while True:
            reply = client.call(params, key=request_key(params), kind=KIND, prompt_hash=PROMPT_HASH,
                                meta={"task_id": task.id, "input": task.input},
                                read_cache=not fresh)
            replies.append(reply)
            params = gen.send(reply)
    except StopIteration as stop:
        status, detail, _reply, attempts = stop.value
        return TaskResult(task, status, detail, replies, attempts)
    except ClaudeAPIError as e:
        return TaskResult(task, "failed", f"API error: {e}", replies, len(replies) + 1)


def distill_tasks(tasks: Iterable[Any], out_path: str | Path, *, model: str = DEFAULT_MODEL,
                  concurrency: int = 8, batch: bool = False,
                  cache_path: str | Path | None = DEFAULT_CACHE_PATH,
                  quarantine_path: str | Path | None = None, max_attempts: int = 3,
                  max_tokens: int = DEFAULT_MAX_TOKENS, timeout: float = 120.0,
                  retry: RetryPolicy | None = None, retry_quarantined: bool = False,
                  poll_interval: float = 30.0, progress: bool = True,
                  client: ClaudeClient | None = None) -> DistillSummary:
    """Distil gold answers for `tasks` into `out_path` (resumable). See the module docstring."""
    if client is None:
        api_key_from_env()       # a missing key is reported before any file is touched
    if batch and cache_path is None and (client is None or client.cache is None):
        raise ValueError("--batch needs the response cache (it is how results are collected)")
    specs = as_tasks(tasks)
    ids = [t.id for t in specs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ContractError(f"task id {dup!r} appears more than once")
    out_path = Path(out_path)
    quarantine_path = Path(quarantine_path) if quarantine_path else default_quarantine_path(out_path)
    done, kept, retry_ids = _prepare_outputs(out_path, quarantine_path, retry_quarantined,
                                             set(ids))
    _check_resume(done, specs, out_path)
    todo = [t for t in specs if t.id not in done and t.id not in kept]
    summary = DistillSummary(total=len(specs), skipped=len(specs) - len(todo),
                             out_path=str(out_path), quarantine_path=str(quarantine_path))
    own_client = client is None
    if own_client:
        client = ClaudeClient(model=model, timeout=timeout, retry=retry, cache=cache_path)
    client.stopping.clear()
    meter = client.meter
    before = (meter.requests, dict(meter.usage), meter.cost)   # a shared client's earlier use
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="distill", unit="task", dynamic_ncols=True)
    out, quarantine = AppendLog(out_path), AppendLog(quarantine_path)
    run = _Run(client, model, out, quarantine, summary, bar)
    try:
        if batch:
            from data.distill_batch import run_batch
            run_batch(run, todo, max_attempts=max_attempts, max_tokens=max_tokens,
                      state_path=batch_state_path(out_path), poll_interval=poll_interval,
                      fresh_ids=retry_ids if retry_quarantined else set())
        else:
            work = lambda t: _run_sync_task(t, client, model=model, max_attempts=max_attempts,
                                            max_tokens=max_tokens,
                                            fresh=retry_quarantined and t.id in retry_ids)
            # On Ctrl-C run_concurrently sets client.stopping and lets requests in flight land
            # in the cache; their tasks are simply not written, and the next run gets them free.
            for task, res, exc in run_concurrently(work, todo, concurrency, client.stopping):
                if exc is not None:   # a bug, not an API error: record it, keep going
                    res = TaskResult(task, "failed", f"internal error: {exc!r}")
                run.finish(res)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if bar is not None:
            bar.close()
        out.close()
        quarantine.close()
        summary.requests = meter.requests - before[0]
        summary.usage = {k: v - before[1].get(k, 0) for k, v in meter.usage.items()}
        summary.cost_usd = meter.cost - before[2]
        summary.cost_text = meter.cost_text(summary.cost_usd)
        if own_client:
            client.close()
    return summary


# ---- CLI ----------------------------------------------------------------------------------
def estimate_cost(n_tasks: int, model: str, batch: bool) -> str:
    """A rough upper bound for the confirmation prompt: one attempt per task, ~700 tokens out."""
    from data.prices import PRICES_PATH, load_prices
    if not PRICES_PATH.exists():
        return "unknown"
    prefix = len(planner_system_prompt() + str(DISCOVERY_TOOL)) // 4
    usage = {"input_tokens": 40 * n_tasks, "output_tokens": 700 * n_tasks,
             "cache_creation_input_tokens": prefix, "cache_read_input_tokens": prefix * n_tasks}
    cost = load_prices().cost(model, usage, batch=batch)
    return "unknown (model not in configs/prices.yaml)" if cost is None else f"~${cost:.2f}"


EPILOG = """\
environment:
  ANTHROPIC_API_KEY   required; never written to any log, record or cache
  ANTHROPIC_BASE_URL  optional, e.g. a gateway

files (for --out gold.jsonl):
  gold.jsonl              one gold case per line: {"id","input","gold":{...},"source",
                          "provenance":{teacher_model, prompt_hash, request_id, usage, ...}}
  gold.quarantine.jsonl   tasks whose answers failed the spec gate, were refused, or failed
                          at the API, each with the reason (API failures are retried next run)
  gold.batch.json         --batch only: the submitted batch ids, so a restart resumes polling

Re-running the same command is always safe: finished tasks are skipped and every answer
already paid for comes from the cache (--cache), so an interrupted run resumes for free.
Exit status: 0 done, 1 some tasks failed at the API (re-run to retry), 2 bad input or
missing key, 130 interrupted."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.distill", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, type=Path,
                   help="tasks: text (one per line, # comments) or JSONL with id/input")
    p.add_argument("--out", required=True, type=Path, help="gold JSONL to write (appended to)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="teacher model (default %(default)s)")
    p.add_argument("--concurrency", type=COUNT, default=8, help="requests in flight (default 8)")
    p.add_argument("--batch", action="store_true",
                   help="use the Message Batches API (half price, results within 24 h)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE_PATH,
                   help="response cache, SQLite (default %(default)s)")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="where rejected tasks go with the reason (default: next to --out, "
                        "gold.jsonl -> gold.quarantine.jsonl)")
    p.add_argument("--max-attempts", type=COUNT, default=3,
                   help="answers per task before quarantine (default 3)")
    p.add_argument("--max-tokens", type=COUNT, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--timeout", type=POSITIVE, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=NON_NEGATIVE, default=6,
                   help="retries of 429/529/5xx/timeouts per request (default 6)")
    p.add_argument("--retry-base-delay", type=number(0.0), default=1.0,
                   help="first backoff in seconds; doubles per retry, with jitter")
    p.add_argument("--poll-interval", type=POSITIVE, default=30.0,
                   help="--batch: seconds between status checks (default 30)")
    p.add_argument("--retry-quarantined", action="store_true",
                   help="ask again (bypassing the cache) for tasks in the quarantine file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before spending money")
    a = p.parse_args(argv)
    try:
        api_key_from_env()
        from data.corpus import read_tasks
        tasks = read_tasks(a.tasks)
    except (MissingKeyError, ContractError, OSError) as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    if not a.yes and sys.stdin.isatty():
        answer = input(f"Distil {len(tasks)} tasks with {a.model}"
                       f"{' (batch)' if a.batch else ''}; estimated cost "
                       f"{estimate_cost(len(tasks), a.model, a.batch)} (tasks already done are "
                       "free). Continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("cancelled", file=sys.stderr)
            return 1
    retry = RetryPolicy(max_retries=a.max_retries, base_delay=a.retry_base_delay)
    try:
        summary = distill_tasks(tasks, a.out, model=a.model, concurrency=a.concurrency,
                                batch=a.batch, cache_path=a.cache, quarantine_path=a.quarantine,
                                max_attempts=a.max_attempts, max_tokens=a.max_tokens,
                                timeout=a.timeout, retry=retry,
                                retry_quarantined=a.retry_quarantined,
                                poll_interval=a.poll_interval, progress=not a.no_progress)
    except (ContractError, ClaudeAPIError, ValueError) as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    print(summary.text())
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
