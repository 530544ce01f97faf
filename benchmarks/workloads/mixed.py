"""Shop traffic: ``clients`` threads, each request a read of a product page (popularity
Zipf-distributed) or a write: a price change (``save()``, any product) or a new review (popular
products get more). Warm-up first, then a measured period of fixed length.

A read is a *hit* when it sent no SQL at all (``QueryCounter``), so the figure means the same
for every contender, whether it caches pages or queries.
"""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal
from functools import partial
from typing import Any

from ..stats import QueryCounter, Zipf, summary_ms

PRICE_SHARE = 0.7  # of writes; the rest are new reviews


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
    started = time.time()
    measure_from = started + scale.mixed_warmup
    stop_at = measure_from + scale.mixed_seconds
    errors: list[BaseException] = []

    def client(index: int) -> None:
        rng = random.Random(scale.seed * 100 + index)
        my_reads: list[tuple[float, int]] = []
        my_writes: list[tuple[float, int]] = []
        try:
            with counter.installed():
                while True:
                    now = time.time()
                    if now >= stop_at:
                        break
                    record = now >= measure_from
                    counter.take()
                    if rng.random() < write_ratio:
                        if rng.random() < PRICE_SHARE:
                            pk = rng.choice(ctx.product_ids)
                            write, _ = ctx.writes.run("price", partial(price_change, pk), [pk],
                                                      record=record)
                        else:
                            pk = popularity.draw(rng)
                            rating = rng.randint(1, 5)
                            write, _ = ctx.writes.run(
                                "review", partial(Review.objects.create, product_id=pk,
                                                  rating=rating), [pk], record=record)
                        if record:
                            my_writes.append((write.latency, counter.take()))
                    else:
                        pk = popularity.draw(rng)
                        t0 = time.perf_counter()
                        contender.read(pk)
                        latency = time.perf_counter() - t0
                        if record:
                            my_reads.append((latency, counter.take()))
        except BaseException as exc:  # reported, not swallowed: the run fails
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()
            with lock:
                reads.extend(my_reads)
                writes.extend(my_writes)

    with ctx.slowlog(1000) as slow:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(scale.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    unapplied = ctx.settle()
    elapsed = scale.mixed_seconds
    read_queries = sum(q for _, q in reads)
    hits = sum(1 for _, q in reads if q == 0)
    windows = [w for w in (rec.window() for rec in ctx.writes.records) if w is not None]
    return {
        "write_ratio": write_ratio,
        "clients": scale.clients,
        "seconds": elapsed,
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
        "window": summary_ms(windows) if contender.invalidates else None,
        "unapplied": unapplied,
        "redis_slowest": slow.longest(),
        "cache_keys_after": ctx.cache_keys(),
    }
