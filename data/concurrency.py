"""Bounded, lazily fed concurrency for API calls that keeps in-flight answers on Ctrl-C."""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator


def run_concurrently(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int,
                     stop: threading.Event | None = None) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield (item, result, exception) as calls finish, with at most `concurrency` in flight.
    Items are submitted lazily. If the consumer stops early (Ctrl-C), `stop` is set and the
    calls in flight are waited for, so answers already being paid for still reach the cache."""
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    pending: dict = {}
    try:
        while True:
            while len(pending) < max(1, concurrency) and not (stop and stop.is_set()):
                item = next(items, _END)
                if item is _END:
                    break
                pending[pool.submit(fn, item)] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                exc = fut.exception()
                yield item, (None if exc else fut.result()), exc
    finally:
        if pending and stop is not None:
            stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
