"""Small measuring tools: percentiles, a Zipf sampler, a per-thread DB query counter."""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def fingerprint(page: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """A hashable identity of a page's content (every write changes it)."""
    return None if page is None else tuple(sorted(page.items()))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, p50, p99, max and mean of durations given in seconds, reported in milliseconds."""
    if not seconds:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(seconds),
        "p50": round(percentile(seconds, 50) * 1000, 4),  # type: ignore[operator]
        "p99": round(percentile(seconds, 99) * 1000, 4),  # type: ignore[operator]
        "max": round(max(seconds) * 1000, 4),
        "mean": round(sum(seconds) / len(seconds) * 1000, 4),
    }


class Zipf:
    """Draw from ``items`` with P(rank k) proportional to 1 / k**s (rank 1 most popular)."""

    def __init__(self, items: Sequence[Any], s: float, seed: int) -> None:
        self.items = list(items)
        random.Random(seed).shuffle(self.items)  # popularity does not follow primary keys
        weights = [1 / (k ** s) for k in range(1, len(self.items) + 1)]
        self.cumulative = list(itertools.accumulate(weights))

    def draw(self, rng: random.Random) -> Any:
        x = rng.random() * self.cumulative[-1]
        return self.items[bisect.bisect_left(self.cumulative, x)]


class QueryCounter:
    """Counts the SQL statements each thread sends (``connection.execute_wrapper``).

    Queries answered from a query cache (cachalot) never reach the database and are not
    counted: the figure is what the database actually served.
    """

    def __init__(self) -> None:
        self.local = threading.local()

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.local.count = getattr(self.local, "count", 0) + 1
        return execute(sql, params, many, context)

    def take(self) -> int:
        count = getattr(self.local, "count", 0)
        self.local.count = 0
        return count

    @contextmanager
    def installed(self) -> Iterator[QueryCounter]:
        from django.db import connection

        with connection.execute_wrapper(self):
            yield self
