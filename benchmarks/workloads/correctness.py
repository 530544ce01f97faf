"""Correctness under concurrency: readers compare every cached read with the database.

``clients - 1`` reader threads read pages of a few hot products, each read followed at once by
the same page computed from the database. One writer changes those products as fast as it can:
price changes (``save()``), new reviews, ``QuerySet.update()`` of one row, and renames of their
categories. After every commit the writer records the new page of each product it affected,
so every state a page went through is known with the moment it was committed.

A cached read that started at ``t`` is *stale* when it returned a state that a commit before
``t`` had replaced; its *age* is ``t`` minus that commit. It is *stale after invalidation* when
the replacing write's invalidation had been applied before ``t`` (this app: the
``invalidation_applied`` signal; cacheops and cachalot: ``atomic()`` had returned, their
invalidation runs in the commit hooks; TTL-only never invalidates). A correct design has none:
only reads inside the commit -> invalidated window may be stale.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import Counter, defaultdict
from decimal import Decimal
from functools import partial
from typing import Any

from django.db.models import F

from ..stats import fingerprint, summary_ms

KINDS = (("save", 50), ("review", 25), ("update", 15), ("rename", 10))


def save(pk: int, rating: int) -> None:
    from ..shop.models import Product

    product = Product.objects.select_for_update().get(pk=pk)
    product.price = product.price + Decimal("0.01")
    product.version += 1
    product.save()


def review(pk: int, rating: int) -> None:
    from ..shop.models import Review

    Review.objects.create(product_id=pk, rating=rating)


def update(pk: int, rating: int) -> None:
    from ..shop.models import Product

    Product.objects.filter(pk=pk).update(price=F("price") + 1, version=F("version") + 1)


def rename(category: int) -> None:
    from ..shop.models import Category

    row = Category.objects.select_for_update().get(pk=category)
    row.name = f"Category {category} rev {time.time_ns()}"
    row.save()


WRITES = {"save": save, "review": review, "update": update}


def run(ctx: Any) -> dict[str, Any]:
    from ..shop.models import Category, Product

    ctx.start_worker()
    ctx.flush_cache()
    ctx.clear_applied()
    contender = ctx.contender
    scale = ctx.scale
    # Hot products in a few categories, so renames touch several of them.
    hot = list(Product.objects.filter(category_id__in=list(
        Category.objects.order_by("pk").values_list("pk", flat=True)[:4]
    )).order_by("pk").values_list("pk", "category_id")[: scale.correctness_hot])
    hot_pks = [pk for pk, _ in hot]
    by_category: dict[int, list[int]] = defaultdict(list)
    for pk, category in hot:
        by_category[category].append(pk)
    # history[pk]: (commit time, fingerprint, write index); index -1 is the initial state.
    history: dict[int, list[tuple[float, Any, int]]] = {
        pk: [(float("-inf"), fingerprint(contender.fresh(pk)), -1)] for pk in hot_pks
    }
    stop = threading.Event()
    observations: list[tuple[int, float, float, Any, Any]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def reader(index: int) -> None:
        rng = random.Random(scale.seed * 1000 + index)
        mine = []
        try:
            while not stop.is_set():
                pk = rng.choice(hot_pks)
                started = time.time()
                cached = fingerprint(contender.read(pk))
                ended = time.time()
                actual = fingerprint(contender.fresh(pk))
                mine.append((pk, started, ended, cached, actual))
        except BaseException as exc:
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()
            with lock:
                observations.extend(mine)

    def writer() -> None:
        rng = random.Random(scale.seed)
        kinds = [k for k, w in KINDS for _ in range(w)]
        try:
            while not stop.is_set():
                kind = rng.choice(kinds)
                pk = rng.choice(hot_pks)
                category = next(c for p, c in hot if p == pk)
                if kind == "rename":
                    affected = by_category[category]
                    fn = partial(rename, category)
                else:
                    affected = [pk]
                    fn = partial(WRITES[kind], pk, rng.randint(1, 5))
                write, _ = ctx.writes.run(kind, fn, affected)
                index = len(ctx.writes.records) - 1
                for p in affected:
                    history[p].append((write.committed, fingerprint(contender.fresh(p)), index))
        except BaseException as exc:
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    readers = max(1, scale.clients - 1)
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    time.sleep(scale.correctness_seconds)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    unapplied = ctx.settle()
    return analyse(ctx, history, observations, unapplied)


def analyse(
    ctx: Any,
    history: dict[int, list[tuple[float, Any, int]]],
    observations: list[tuple[int, float, float, Any, Any]],
    unapplied: int,
) -> dict[str, Any]:
    records = ctx.writes.records
    invalidates = ctx.contender.invalidates
    stale_ages: list[float] = []
    after_ages: list[float] = []
    by_kind: Counter[str] = Counter()
    after_by_kind: Counter[str] = Counter()
    torn = torn_live = differs_from_db = unexplained = 0
    examples: list[dict[str, Any]] = []
    origin = min((r.started for r in records), default=0.0)
    for pk, started, ended, cached, actual in observations:
        states = history[pk]
        if cached != actual:
            differs_from_db += 1
        # A commit is certain once acknowledged (``committed``) but may be visible from the
        # moment it was sent, and under load the writer learns of it milliseconds later.
        times = [t for t, _, _ in states]
        current = bisect.bisect_right(times, started) - 1  # last commit certain before the read
        if cached == states[current][1]:
            continue
        if any(states[i][1] == cached for i in range(current + 1, len(states))):
            continue  # a newer state: committed while the read ran
        earlier = [i for i in range(current) if states[i][1] == cached]
        if not earlier:
            sent = [_sent(records[states[i][2]]) for i in range(current + 1, len(states))]
            if any(t <= ended for t in sent):
                torn_live += 1  # two queries straddled a commit: not a cache fault
                continue
            torn += 1  # matches no committed state: stored from parts of two states
            replaced_by = current
        else:
            replaced_by = earlier[-1] + 1
        if replaced_by <= 0:
            unexplained += 1  # no commit to blame: would be a bug of this analysis
            continue
        age = started - states[replaced_by][0]
        write = records[states[replaced_by][2]]
        stale_ages.append(age)
        by_kind[write.kind] += 1
        # Stale after invalidation: some write that replaced this state had been invalidated.
        if invalidates:
            done = [_invalidated_at(records[states[i][2]]) for i in range(replaced_by, current + 1)]
            if any(t is not None and t < started for t in done):
                after_ages.append(age)
                after_by_kind[write.kind] += 1
                if len(examples) < 20:
                    examples.append(_example(pk, started, ended, cached, states, replaced_by,
                                             current, records, origin))
    windows = [w for w in (r.window() for r in records) if w is not None]
    return {
        "reads": len(observations),
        "writes": len(records),
        "writes_by_kind": dict(Counter(r.kind for r in records)),
        "stale_reads": len(stale_ages),
        "stale_rate": round(len(stale_ages) / max(1, len(observations)), 5),
        "stale_age": summary_ms(stale_ages),
        "stale_by_kind": dict(by_kind),
        "stale_after_invalidation": len(after_ages) if invalidates else None,
        "stale_after_invalidation_age": summary_ms(after_ages) if invalidates else None,
        "stale_after_invalidation_by_kind": dict(after_by_kind) if invalidates else None,
        "torn_reads": torn,
        "torn_while_reading": torn_live,
        "unexplained": unexplained,
        "differs_from_db_read": differs_from_db,
        "window": summary_ms(windows) if invalidates else None,
        "unapplied": unapplied,
        # Each stale read after invalidation, as evidence: times in ms from the first write.
        "stale_after_invalidation_examples": examples,
    }


def _example(pk: int, started: float, ended: float, cached: Any, states: list[Any],
             replaced_by: int, current: int, records: list[Any], origin: float) -> dict[str, Any]:
    def ms(t: float | None) -> float | None:
        return None if t is None else round((t - origin) * 1000, 3)

    writes = []
    for i in range(max(1, replaced_by - 1), min(len(states), current + 2)):
        w = records[states[i][2]]
        writes.append({"kind": w.kind, "commit_sent": ms(w.commit_sent),
                       "committed": ms(w.committed), "done": ms(w.done),
                       "applied": ms(w.applied), "events": len(w.events),
                       "replaced_the_value_read": i == replaced_by})
    return {"pk": pk, "read_started": ms(started), "read_ended": ms(ended),
            "value_read": dict(cached) if cached else None,
            "current_value": dict(states[current][1]) if states[current][1] else None,
            "writes": writes}


def _sent(write: Any) -> float:
    return write.commit_sent if write.commit_sent is not None else write.committed


def _invalidated_at(write: Any) -> float | None:
    return write.applied if write.events else write.done
