"""The requests of the shop-traffic workload, and the best hit rates any cache could reach on
them.

Every client of :mod:`benchmarks.workloads.mixed` draws its requests from its own seeded
generator, here; :func:`hit_rate_ceilings` replays the same requests (clients taken in turn,
no database) through two ideal caches: one that never invalidates (TTL-only's ceiling: every
page read before is a hit, stale or not) and one that drops exactly the pages a write changed
(the ceiling of any cache that never serves a stale page). No cache that serves only fresh
pages can beat the second figure on these requests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .stats import Zipf

PRICE_SHARE = 0.7  # of writes; the rest are new reviews


def requests(
    scale: Any, index: int, write_ratio: float, ids: Sequence[int], popularity: Zipf
) -> Iterator[tuple[int, str, int, int]]:
    """Client ``index``'s requests: (number, "read" | "price" | "review", product pk, rating).
    Price changes go to any product, reviews and reads to popular ones."""
    rng = random.Random(scale.seed * 100 + index)
    for number in range(scale.mixed_warmup + scale.mixed_requests):
        if rng.random() < write_ratio:
            if rng.random() < PRICE_SHARE:
                yield number, "price", rng.choice(ids), 0
            else:
                pk = popularity.draw(rng)
                yield number, "review", pk, rng.randint(1, 5)
        else:
            yield number, "read", popularity.draw(rng), 0


def hit_rate_ceilings(scale: Any, write_ratio: float) -> dict[str, float]:
    """Hit rates of the measured reads for a never-invalidating and an exactly-invalidating
    cache with unlimited memory (the seeded catalogue's primary keys are 1..products)."""
    ids = list(range(1, scale.products + 1))
    popularity = Zipf(ids, scale.zipf_s, scale.seed)
    streams = [requests(scale, i, write_ratio, ids, popularity) for i in range(scale.clients)]
    never: set[int] = set()
    exact: set[int] = set()
    reads = never_hits = exact_hits = 0
    while streams:
        for stream in list(streams):
            step = next(stream, None)
            if step is None:
                streams.remove(stream)
                continue
            number, kind, pk, _ = step
            if kind != "read":
                exact.discard(pk)
                continue
            if number >= scale.mixed_warmup:
                reads += 1
                never_hits += pk in never
                exact_hits += pk in exact
            never.add(pk)
            exact.add(pk)
    return {"never_invalidating": round(never_hits / max(1, reads), 4),
            "exact_invalidation": round(exact_hits / max(1, reads), 4)}
