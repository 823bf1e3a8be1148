"""Token prices (configs/prices.yaml), usage arithmetic and the running cost meter."""
from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

PRICES_PATH = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens."""
    input: float
    output: float
    cache_write: float
    cache_read: float


@dataclass
class PriceTable:
    models: dict[str, ModelPrice]
    batch_discount: float = 0.5

    def price_for(self, model: str) -> ModelPrice | None:
        if model in self.models:
            return self.models[model]
        # Dated ids ("claude-sonnet-4-5-20250929") use the price of their family name.
        stem = max((m for m in self.models if model.startswith(m + "-")), key=len, default=None)
        return self.models[stem] if stem else None

    def cost(self, model: str, usage: dict, *, batch: bool = False) -> float | None:
        p = self.price_for(model)
        if p is None:
            return None
        dollars = (usage.get("input_tokens", 0) * p.input + usage.get("output_tokens", 0) * p.output
                   + usage.get("cache_creation_input_tokens", 0) * p.cache_write
                   + usage.get("cache_read_input_tokens", 0) * p.cache_read) / 1e6
        return dollars * (1.0 - self.batch_discount) if batch else dollars


def load_prices(path: str | Path = PRICES_PATH) -> PriceTable:
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    top = {"batch_discount", "models"}
    for key in raw:
        if key not in top:
            raise ValueError(f"{path}: unknown key {key!r}; valid keys: {', '.join(sorted(top))}")
    valid = [f.name for f in fields(ModelPrice)]
    models = {}
    for name, spec in (raw.get("models") or {}).items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: models.{name} must be a mapping of {', '.join(valid)}")
        for key in spec:
            if key not in valid:
                raise ValueError(f"{path}: models.{name}: unknown key {key!r}; valid keys: "
                                 f"{', '.join(valid)}")
        missing = [k for k in valid if k not in spec]
        if missing:
            raise ValueError(f"{path}: models.{name}: missing {', '.join(missing)}")
        models[str(name)] = ModelPrice(**{k: float(spec[k]) for k in valid})
    discount = float(raw.get("batch_discount", 0.5))
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"{path}: batch_discount must be in [0, 1), got {discount}")
    return PriceTable(models, discount)


def usage_dict(usage: Any) -> dict[str, int]:
    if usage is None:
        return {k: 0 for k in USAGE_FIELDS}
    get = usage.get if isinstance(usage, dict) else (lambda k, d=None: getattr(usage, k, d))
    return {k: int(get(k, 0) or 0) for k in USAGE_FIELDS}


def add_usage(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in USAGE_FIELDS}


class UsageMeter:
    """Thread-safe running totals of requests, cache hits, tokens and dollars."""

    def __init__(self, prices: PriceTable | None):
        self.prices = prices
        self._lock = threading.Lock()
        self.requests = 0          # HTTP requests sent (including retried ones)
        self.cache_hits = 0
        self.usage = {k: 0 for k in USAGE_FIELDS}
        self.cost = 0.0
        self.unpriced_models: set[str] = set()

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count_cache_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def add(self, model: str, usage: dict, *, batch: bool = False) -> None:
        dollars = self.prices.cost(model, usage, batch=batch) if self.prices else None
        with self._lock:
            self.usage = add_usage(self.usage, usage)
            if dollars is None:
                self.unpriced_models.add(model)
            else:
                self.cost += dollars

    def cost_text(self, cost: float | None = None) -> str:
        cost = self.cost if cost is None else cost
        if self.unpriced_models:
            return (f"${cost:.4f} + unpriced ({', '.join(sorted(self.unpriced_models))} "
                    "missing from configs/prices.yaml)")
        return f"${cost:.4f}"
