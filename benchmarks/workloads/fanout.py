"""Write fan-out: one product is cached in N entries; save it once.

For each N: fill N entries that depend on the product (each contender's idiom, see
:mod:`benchmarks.contenders`) and measure Redis memory per entry (``MEMORY USAGE`` of every
key of the cache database after the fill, divided by N: values, tag indexes and bookkeeping
together). Then save the product with every Redis command logged: the write's latency,
commit -> invalidated, the longest single Redis command (what blocked every other client), and
how many sampled entries are still served afterwards.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

from django.conf import settings

from ..contenders import FAN_TTL

SAMPLE = 200


def run(ctx: Any) -> dict[str, Any]:
    from ..shop.models import Product

    ctx.start_worker()
    contender = ctx.contender
    pk = ctx.product_ids[len(ctx.product_ids) // 2]
    results = []
    for size in ctx.scale.fanout_sizes:
        ctx.flush_cache()
        ctx.clear_applied()
        rng = random.Random(size)
        sample = rng.sample(range(size), min(SAMPLE, size))
        filled_at = time.perf_counter()
        for i in range(size):
            contender.fan_read(pk, i)
        fill = time.perf_counter() - filled_at
        memory = ctx.keyspace_bytes()
        # Filling can outlast the entries' TTL (cachalot: one SQL query per entry and one
        # global 60 s timeout): then early entries have expired, and bytes per entry would be
        # understated.
        outlived = fill > (settings.TTL if ctx.contender.name == "cachalot" else FAN_TTL)
        cached_before = sum(contender.fan_peek(pk, i) for i in sample)

        def save() -> None:
            product = Product.objects.select_for_update().get(pk=pk)
            product.price = product.price + Decimal("0.01")
            product.version += 1
            product.save()

        with ctx.slowlog() as slow:
            write, _ = ctx.writes.run("price", save, [pk])
            unapplied = ctx.settle()
        cached_after = sum(contender.fan_peek(pk, i) for i in sample)
        window = write.window()
        results.append({
            "entries": size,
            "fill_seconds": round(fill, 3),
            "fill_us_per_entry": round(fill / size * 1e6, 1),
            "memory_bytes_per_entry": round(memory / size, 1)
            if contender.fans and not outlived else None,
            "fill_outlived_ttl": outlived,
            "sampled": len(sample),
            "cached_before": cached_before,
            "cached_after": cached_after,
            "write_ms": round(write.latency * 1000, 3),
            "window_ms": None if window is None or not contender.invalidates
            else round(window * 1000, 3),
            "unapplied": unapplied,
            "redis_longest": slow.longest(),
        })
    return {"product": pk, "sizes": results}
