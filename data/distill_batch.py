"""`python -m data.distill --batch`: the same conversations through the Message Batches API.

Each round collects the next uncached request of every unfinished task into a batch (stable
custom_ids: task id + attempt), persists the batch id (gold.jsonl -> gold.batch.json) before
polling, then stores each result in the response cache under its request's key. The tasks'
conversations are then replayed from the cache exactly as in the synchronous path, so validation, retries with
feedback, quarantine and the written records are identical. A restart with that state file
present resumes polling that batch instead of submitting a new one.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from data.anthropic_client import ToolReply
from data.response_cache import now_iso
from data.appendlog import write_json_atomically
from data.contract import PROMPT_HASH
from data.teacher import DISCOVERY_TOOL, KIND, TaskResult, conversation, request_key

BATCH_CHUNK = 5000   # requests per batch, well under the API's 100k / 256 MB limits


def custom_id_for(task_id: str, attempt: int) -> str:
    """Stable, unique and within the API's ^[a-zA-Z0-9_-]{1,64}$."""
    slug = re.sub(r"[^a-zA-Z0-9_-]", "_", task_id)[:40]
    return f"{slug}-{hashlib.sha256(task_id.encode()).hexdigest()[:8]}-a{attempt}"


def _load_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: unreadable batch state ({e.msg}); it names batches already "
                         "paid for — fix it, or delete it to resubmit") from None


def _collect(run, state_path: Path, poll_interval: float, errors: dict[str, str],
             fresh_keys: set[str]) -> None:
    """Poll every batch named in the state file until it ends, cache its results, drop the file."""
    state = _load_state(state_path)
    if not state:
        return
    client = run.client
    for entry in state["batches"]:
        bid, keys = entry["id"], entry["requests"]
        while True:
            status = client.batch_status(bid)
            if status.processing_status == "ended":
                break
            if run.bar is not None:
                run.bar.set_postfix_str(f"batch {bid}: {status.processing_status}, "
                                        f"{status.request_counts.processing} processing",
                                        refresh=True)
            time.sleep(poll_interval)
        seen = set()
        for custom_id, result in client.batch_results(bid, DISCOVERY_TOOL["name"]):
            key = keys.get(custom_id)
            if key is None:
                continue
            seen.add(custom_id)
            if isinstance(result, ToolReply):
                client.cache.put(key, result.to_cache(), kind=KIND, model=state["model"],
                                 prompt_hash=PROMPT_HASH, meta={"custom_id": custom_id})
                fresh_keys.add(key)
            else:
                errors[key] = result
        for custom_id in set(keys) - seen:
            errors[keys[custom_id]] = f"batch {bid} returned no result for {custom_id}"
    state_path.unlink()


def run_batch(run, todo, *, max_attempts: int, max_tokens: int, state_path: Path,
              poll_interval: float, fresh_ids: set[str]) -> None:
    client, cache = run.client, run.client.cache
    errors: dict[str, str] = {}
    fresh_keys: set[str] = set()        # cache rows written by this run
    _collect(run, state_path, poll_interval, errors, fresh_keys)   # resume, never resubmit
    active = {}
    for t in todo:
        gen = conversation(t, model=run.model, max_attempts=max_attempts, max_tokens=max_tokens)
        active[t.id] = {"task": t, "gen": gen, "params": next(gen), "replies": []}
    while active:
        needs = []
        for tid, d in list(active.items()):
            result = None
            while result is None:
                key = request_key(d["params"])
                hit = cache.get(key)
                # --retry-quarantined: ignore answers cached before this run for those tasks.
                if hit is not None and (tid not in fresh_ids or key in fresh_keys):
                    reply = ToolReply.from_cache(hit)
                    if key in fresh_keys:
                        reply.cached = False   # paid for in this run
                    else:
                        client.meter.count_cache_hit()
                    d["replies"].append(reply)
                    try:
                        d["params"] = d["gen"].send(reply)
                    except StopIteration as stop:
                        status, detail, _r, attempts = stop.value
                        result = TaskResult(d["task"], status, detail, d["replies"], attempts)
                elif key in errors:
                    result = TaskResult(d["task"], "failed", f"API error: {errors[key]}",
                                        d["replies"], len(d["replies"]) + 1)
                else:
                    needs.append((d, key))
                    break
            if result is not None:
                run.finish(result)
                del active[tid]
        if not needs:
            break
        state = {"model": run.model, "prompt_hash": PROMPT_HASH, "created_at": now_iso(),
                 "batches": []}
        for start in range(0, len(needs), BATCH_CHUNK):
            chunk = needs[start:start + BATCH_CHUNK]
            reqs = {custom_id_for(d["task"].id, len(d["replies"]) + 1): (d["params"], key)
                    for d, key in chunk}
            bid = client.submit_batch([(cid, params) for cid, (params, _k) in reqs.items()])
            # Persist at once: from here on a restart resumes this batch instead of paying again.
            state["batches"].append({"id": bid, "requests": {cid: k for cid, (_p, k)
                                                             in reqs.items()}})
            write_json_atomically(state_path, state)
        _collect(run, state_path, poll_interval, errors, fresh_keys)
