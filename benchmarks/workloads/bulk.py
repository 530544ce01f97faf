"""Bulk: one ``QuerySet.update()`` of N rows whose pages are cached, for each N in
``bulk_rows``.

Pages of the updated rows and of ``bulk_bystanders`` untouched rows are cached first. After
the update (and, for celery, after the worker applied it): the update's latency and SQL count,
commit -> invalidated, the longest Redis command, the share of sampled updated pages still
served stale, and the share of untouched pages that were dropped anyway (collateral).
"""

from __future__ import annotations

import itertools
import random
import time
from functools import partial
from typing import Any

from django.db.models import F

from ..stats import QueryCounter, fingerprint

SAMPLE = 300


def run(ctx: Any) -> dict[str, Any]:
    from ..shop.models import Product

    ctx.start_worker()
    contender = ctx.contender
    scale = ctx.scale
    counter = QueryCounter()
    results = []
    for size, (label, update) in itertools.product(scale.bulk_rows, contender.bulk_variants()):
        rows = ctx.product_ids[:size]
        bystanders = ctx.product_ids[size: size + scale.bulk_bystanders]
        sample = random.Random(scale.seed).sample(rows, min(SAMPLE, len(rows)))
        ctx.flush_cache()
        ctx.clear_applied()
        warm_started = time.perf_counter()
        # The rows checked afterwards are cached last: warming 10,000 pages can take longer
        # than the 60 s TTL on a slow contender, and an expired entry is no stale entry.
        checked = set(sample)
        for pk in [pk for pk in rows if pk not in checked] + sample + bystanders:
            contender.read(pk)
        warm = time.perf_counter() - warm_started
        cached_rows = sum(contender.peek(pk) for pk in sample)
        queryset = Product.objects.filter(pk__gte=rows[0], pk__lte=rows[-1])
        values = {"price": F("price") + 1, "version": F("version") + 1}
        with ctx.slowlog() as slow, counter.installed():
            counter.take()
            write, changed = ctx.writes.run("update", partial(update, queryset, values), rows)
            queries = counter.take()
            unapplied = ctx.settle()
        stale = sum(fingerprint(contender.read(pk)) != fingerprint(contender.fresh(pk))
                    for pk in sample)
        kept = sum(contender.peek(pk) for pk in bystanders)
        window = write.window()
        results.append({
            "variant": label,
            "rows": changed,
            "warm_seconds": round(warm, 3),
            "sampled_cached_before": cached_rows,
            "update_ms": round(write.latency * 1000, 3),
            "queries": queries,
            "window_ms": None if window is None or not contender.invalidates
            else round(window * 1000, 3),
            "unapplied": unapplied,
            "redis_longest": slow.longest(),
            "sampled": len(sample),
            "stale_after": stale,
            "bystanders": len(bystanders),
            "bystanders_dropped": len(bystanders) - kept if contender.fans else None,
        })
    return {"variants": results}
