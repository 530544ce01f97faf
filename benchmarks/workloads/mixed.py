"""Shop traffic: ``clients`` threads, each request a read of a product page (popularity
Zipf-distributed) or a write: a price change (``save()``, any product) or a new review (popular
products get more). Each client sends a fixed number of requests, drawn from its own seeded
generator, so every contender serves the same requests (in whatever interleaving the threads
take): hit rates compare like with like, however fast a contender is. The first
``mixed_warmup`` requests of each client are not measured; throughput is the measured requests
over the time from the first measured request to the last.

A read is a *hit* when it sent no SQL at all (``QueryCounter``), so the figure means the same
for every contender, whether it caches pages or queries.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from functools import partial
from typing import Any

from ..ideal import hit_rate_ceilings, requests
from ..stats import QueryCounter, Zipf, summary_ms


def price_change(pk: int) -> None:
    from ..shop.models import Product

    product = Product.objects.select_for_update().get(pk=pk)
    product.price = Decimal(100 + (int(product.price * 100) + 7) % 99_900) / 100
    product.version += 1
    product.save()


def run(ctx: Any, write_ratio: float) -> dict[str, Any]:
    from ..shop.models import Review

    ctx.start_worker()
    ctx.flush_cache()
    ctx.clear_applied()
    scale = ctx.scale
    popularity = Zipf(ctx.product_ids, scale.zipf_s, scale.seed)
    counter = QueryCounter()
    contender = ctx.contender
    reads: list[tuple[float, int]] = []  # (latency, queries)
    writes: list[tuple[float, int]] = []
    lock = threading.Lock()
    spans: list[tuple[float, float]] = []  # each client's measured (first start, last end)
    errors: list[BaseException] = []

    def client(index: int) -> None:
        my_reads: list[tuple[float, int]] = []
        my_writes: list[tuple[float, int]] = []
        first = last = 0.0
        try:
            with counter.installed():
                for number, kind, pk, rating in requests(
                    scale, index, write_ratio, ctx.product_ids, popularity
                ):
                    record = number >= scale.mixed_warmup
                    if number == scale.mixed_warmup:
                        first = time.time()
                    counter.take()
                    if kind == "read":
                        t0 = time.perf_counter()
                        contender.read(pk)
                        latency = time.perf_counter() - t0
                        if record:
                            my_reads.append((latency, counter.take()))
                        continue
                    if kind == "price":
                        fn = partial(price_change, pk)
                    else:
                        fn = partial(Review.objects.create, product_id=pk, rating=rating)
                    write, _ = ctx.writes.run(kind, fn, [pk], record=record)
                    if record:
                        my_writes.append((write.latency, counter.take()))
            last = time.time()
        except BaseException as exc:  # reported, not swallowed: the run fails
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()
            with lock:
                reads.extend(my_reads)
                writes.extend(my_writes)
                spans.append((first, last))

    with ctx.slowlog(1000) as slow:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(scale.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    unapplied = ctx.settle()
    elapsed = max(e for _, e in spans) - min(b for b, _ in spans)
    read_queries = sum(q for _, q in reads)
    hits = sum(1 for _, q in reads if q == 0)
    windows = [w for w in (rec.window() for rec in ctx.writes.records) if w is not None]
    return {
        "write_ratio": write_ratio,
        "clients": scale.clients,
        "seconds": round(elapsed, 2),
        "requests": len(reads) + len(writes),
        "throughput": round((len(reads) + len(writes)) / elapsed, 1),
        "reads": len(reads),
        "writes": len(writes),
        "read_latency": summary_ms([lat for lat, _ in reads]),
        "write_latency": summary_ms([lat for lat, _ in writes]),
        "queries_per_read": round(read_queries / len(reads), 3) if reads else None,
        "queries_per_request": round(
            (read_queries + sum(q for _, q in writes)) / max(1, len(reads) + len(writes)), 3),
        "hit_rate": round(hits / len(reads), 4) if reads else None,
        # The same requests through ideal caches (no database): see benchmarks.ideal.
        "hit_rate_ceilings": hit_rate_ceilings(scale, write_ratio),
        "window": summary_ms(windows) if contender.invalidates else None,
        "unapplied": unapplied,
        "redis_slowest": slow.longest(),
        "cache_keys_after": ctx.cache_keys(),
    }
