"""Baselines in the same process: ``save()`` of a declared model against the same save of an
undeclared twin (``PlainProduct``), and a cached page read against a plain django-redis
``cache.get`` of the same value. Interleaved, so drift hits both sides alike.

The saves are timed twice: as written (autocommit: ``save()`` is its own transaction), and each
inside ``transaction.atomic()`` (one transaction per save, as under ``ATOMIC_REQUESTS``): in
autocommit this app's ``outbox`` transport writes its row in a second transaction of its own,
inside ``atomic()`` in the same one."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db import transaction

from ..stats import summary_ms


def run(ctx: Any) -> dict[str, Any]:
    from ..shop.models import PlainProduct, Product

    ctx.start_worker()
    n = ctx.scale.micro_iterations
    product = Product.objects.get(pk=ctx.product_ids[-1])
    plain = PlainProduct.objects.order_by("pk").first()
    declared_t: list[float] = []
    plain_t: list[float] = []
    declared_atomic: list[float] = []
    plain_atomic: list[float] = []
    for i in range(n + n // 10):
        record = i >= n // 10  # the first tenth warms connections and caches up
        for obj, sink in ((product, declared_t), (plain, plain_t))[:: 1 if i % 2 else -1]:
            obj.price = Decimal(1000 + i % 500) / 10
            obj.version += 1
            started = time.perf_counter()
            obj.save()
            if record:
                sink.append(time.perf_counter() - started)
    for i in range(n + n // 10):
        record = i >= n // 10
        for obj, sink in ((product, declared_atomic), (plain, plain_atomic))[:: 1 if i % 2
                                                                             else -1]:
            obj.price = Decimal(1000 + i % 500) / 10
            obj.version += 1
            started = time.perf_counter()
            with transaction.atomic():
                obj.save()
            if record:
                sink.append(time.perf_counter() - started)
    # Redis commands a save causes (for celery: the publish and the worker's apply, once the
    # saves timed above are all applied).
    ctx.wait_idle()
    with ctx.slowlog() as slow:
        for _ in range(20):
            product.version += 1
            product.save()
        ctx.wait_idle()

    # A hit of the contender's page against django-redis get of the same value.
    pk = ctx.product_ids[0]
    value = ctx.contender.read(pk)
    ctx.contender.read(pk)
    cache.set("bench:plain-hit", value, 600)
    hit_t: list[float] = []
    get_t: list[float] = []
    for i in range(n + n // 10):
        record = i >= n // 10
        pairs = ((lambda: ctx.contender.read(pk), hit_t),
                 (lambda: cache.get("bench:plain-hit"), get_t))
        for call, sink in pairs[:: 1 if i % 2 else -1]:
            started = time.perf_counter()
            call()
            if record:
                sink.append(time.perf_counter() - started)
    served = ctx.contender.peek(pk)
    save, plain_save = summary_ms(declared_t), summary_ms(plain_t)
    save_atomic, plain_atomic_s = summary_ms(declared_atomic), summary_ms(plain_atomic)
    hit, get = summary_ms(hit_t), summary_ms(get_t)
    return {
        "save": save,
        "plain_save": plain_save,
        "save_ratio_p50": _ratio(save["p50"], plain_save["p50"]),
        "save_ratio_mean": _ratio(save["mean"], plain_save["mean"]),
        "save_atomic": save_atomic,
        "plain_save_atomic": plain_atomic_s,
        "save_atomic_ratio_p50": _ratio(save_atomic["p50"], plain_atomic_s["p50"]),
        "save_atomic_ratio_mean": _ratio(save_atomic["mean"], plain_atomic_s["mean"]),
        "redis_commands_per_save": len(slow.entries) / 20,
        "hit": hit,
        "redis_get": get,
        "hit_served_from_cache": served,
        "hit_ratio_p50": _ratio(hit["p50"], get["p50"]),
        "hit_ratio_mean": _ratio(hit["mean"], get["mean"]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)
