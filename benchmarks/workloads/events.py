"""Events per second one Celery worker (solo pool: one process, one core) sustains.

With the worker stopped, committed transactions publish their batches to the queue: first
``events_single`` transactions of one product save each, then transactions of ``batch_size``
saves each (one message per transaction). Then one worker starts and drains the queue; the
rate is taken between the first and the last applied batch, so start-up is not counted. The
products' pages are cached first, so the worker deletes real entries.

Only ``ours_celery`` has a worker; other contenders skip this workload.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from ..tracking import APPLIED


def run(ctx: Any) -> dict[str, Any] | None:
    if not ctx.celery:
        return None
    from ..shop.models import Product

    scale = ctx.scale
    ctx.flush_cache()
    ids = ctx.product_ids
    results = []
    # (events per transaction, events, worker environment): the last run switches storm
    # control's rate limit off, so no event is escalated to its model's coarse tag.
    configs = (
        (1, scale.events_single, {}),
        (scale.batch_size, scale.events_batched, {}),
        (scale.batch_size, scale.events_batched, {"BENCH_MODEL_RATE_LIMIT": "0"}),
    )
    for size, total, env in configs:
        ctx.stop_worker()
        ctx.clear_applied()
        for pk in ids[: min(total, len(ids))]:
            ctx.contender.read(pk)
        escalated_before = _escalated()
        published_at = time.perf_counter()
        batches = 0
        for start in range(0, total, size):
            chunk = [ids[(start + j) % len(ids)] for j in range(size)]
            products = list(Product.objects.filter(pk__in=chunk))

            def save_all(products: list[Any] = products) -> None:
                for product in products:
                    product.price = product.price + Decimal("0.01")
                    product.version += 1
                    product.save()

            ctx.writes.run("price", save_all, chunk, record=False)
            batches += 1
        publish = time.perf_counter() - published_at
        ctx.start_worker(**env)
        deadline = time.time() + 300
        while ctx.bookkeeping.llen(APPLIED) < batches and time.time() < deadline:
            time.sleep(0.05)
        drained = ctx.bookkeeping.llen(APPLIED)
        applied = sorted(json.loads(raw) for raw in ctx.bookkeeping.lrange(APPLIED, 0, -1))
        events = sum(len(entry) - 1 for entry in applied)
        first_batch = len(applied[0]) - 1 if applied else 0
        span = applied[-1][0] - applied[0][0] if len(applied) > 1 else 0.0
        results.append({
            "batch_size": size,
            "rate_limit": "off" if env else "default",
            "batches": batches,
            "events": events,
            "drained_batches": drained,
            "publish_seconds": round(publish, 3),
            "drain_seconds": round(span, 3),
            "events_per_second": round((events - first_batch) / span, 1) if span else None,
            "batches_per_second": round((len(applied) - 1) / span, 1) if span else None,
            "escalated": None if escalated_before is None
            else (_escalated() or 0) - escalated_before,
        })
    ctx.stop_worker()
    ctx.clear_applied()
    ctx.start_worker()  # with the default settings, for the other workloads
    return {"runs": results}


def _escalated() -> int | None:
    """Storm control's ``escalated`` counter (None if this version of the app has none)."""
    try:
        from cache_invalidation import metrics

        return int(metrics.read(["escalated"])["escalated"])
    except Exception:
        return None
