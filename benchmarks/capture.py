"""What capture costs on a miss: querysets evaluated plain and inside ``capturing()``.

Capture runs only while a value is computed (a miss); a hit is one ``GET`` and never reaches
it. This measures, for the query shapes capture handles differently (a key lookup, a filter on
a foreign key, a join the compiler adds, an aggregate across a relation, a subquery), three
variants of the same query in the same process:

* ``django``: a plain ``QuerySet`` of the model on a connection without the app's execute
  wrapper, what Django alone costs;
* ``idle``: the model's own manager (the app's queryset class, the execute wrapper in place)
  with no capture active, what every query outside a computation pays; this is the baseline;
* ``captured``: the same inside ``capturing()`` (entered and left around each query, so a
  computation of one query pays it all).

A round times a batch of calls of each variant, in an order that rotates from round to round
(so drift and a variant's position in the round cancel out); the figures are medians over the
rounds, and the ratios are medians of each round's own ratio, with the interquartile range of
those ratios as the noise. The target is a ``captured``/``idle`` ratio below 1.05 (capture
under 5 % of the query's own time).

Runs on the test settings' database (SQLite in memory unless ``DATABASE_URL`` is set, then a
database of its own that it creates and drops); needs no Redis.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

VARIANTS = ("django", "idle", "captured")


def _queries() -> dict[str, Callable[[Callable[[type], Any]], Any]]:
    """Each query, given how to get a model's queryset (the app's, or Django's own)."""
    from django.db.models import Count, Exists, OuterRef

    from testproject.shop.models import Category, Product

    first = Category.objects.order_by("pk").first()
    assert first is not None
    pk = first.pk
    product = Product.objects.filter(category_id=pk).first()
    assert product is not None
    return {
        "key lookup": lambda qs: qs(Product).get(pk=product.pk),
        "foreign key filter": lambda qs: list(qs(Product).filter(category_id=pk)),
        "order_by a relation": lambda qs: list(qs(Product).order_by("category__name")[:20]),
        "aggregate across a relation": lambda qs: qs(Category).aggregate(n=Count("products")),
        "Exists subquery": lambda qs: list(
            qs(Category).filter(Exists(qs(Product).filter(category=OuterRef("pk"))))[:20]
        ),
    }


@contextmanager
def _without_wrapper() -> Iterator[None]:
    """The default connection without the app's execute wrapper (put back afterwards)."""
    from django.db import connection

    from cache_invalidation.capture import on_execute

    wrappers = connection.execute_wrappers
    position = wrappers.index(on_execute)
    wrappers.pop(position)
    try:
        yield
    finally:
        wrappers.insert(position, on_execute)


def _callers(query: Callable[[Callable[[type], Any]], Any]) -> dict[str, Callable[[], Any]]:
    from django.db.models import QuerySet

    from cache_invalidation import capture as _cap

    def django_qs(model: type) -> Any:
        return QuerySet(model=model)

    def own_qs(model: Any) -> Any:
        return model._default_manager.all()

    def django() -> Any:
        return query(django_qs)

    def idle() -> Any:
        return query(own_qs)

    def captured() -> Any:
        with _cap.capturing():
            return query(own_qs)

    return {"django": django, "idle": idle, "captured": captured}


def _batch(call: Callable[[], Any], repeat: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(repeat):
        call()
    return (time.perf_counter_ns() - start) / repeat / 1000


def _timed(callers: dict[str, Callable[[], Any]], variant: str, repeat: int) -> float:
    if variant == "django":
        with _without_wrapper():
            return _batch(callers[variant], repeat)
    return _batch(callers[variant], repeat)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure(rounds: int, repeat: int) -> dict[str, dict[str, Any]]:
    from django.db import connection

    connection.ensure_connection()
    results: dict[str, dict[str, Any]] = {}
    for name, query in _queries().items():
        callers = _callers(query)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for variant in VARIANTS:  # warm up: statements compiled and scanned once
            _timed(callers, variant, max(1, repeat // 10))
        gc.collect()
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            if r % 2:
                order = order[::-1]
            for variant in order:
                times[variant].append(_timed(callers, variant, repeat))
        ratios = [c / i for c, i in zip(times["captured"], times["idle"], strict=True)]
        idle_ratios = [i / d for i, d in zip(times["idle"], times["django"], strict=True)]
        q1, ratio, q3 = _quartiles(ratios)
        i1, idle_ratio, i3 = _quartiles(idle_ratios)
        results[name] = {
            **{f"{v}_us": statistics.median(times[v]) for v in VARIANTS},
            "ratio": ratio,
            "ratio_iqr": [q1, q3],
            "idle_ratio": idle_ratio,
            "idle_ratio_iqr": [i1, i3],
        }
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks capture")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from decimal import Decimal

    from django.test.utils import (
        setup_databases,
        setup_test_environment,
        teardown_databases,
        teardown_test_environment,
    )

    from cache_invalidation import no_invalidation
    from testproject.shop.models import Category, Product

    setup_test_environment()
    databases = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    try:
        with no_invalidation():
            categories = Category.objects.bulk_create(
                [Category(name=f"c{i:04}", slug=f"c{i:04}") for i in range(options.rows // 4 or 1)]
            )
            Product.objects.bulk_create(
                [
                    Product(
                        name=f"p{i}", price=Decimal(1), category=categories[i % len(categories)]
                    )
                    for i in range(options.rows)
                ]
            )
        results = measure(options.rounds, options.repeat)
    finally:
        teardown_databases(databases, verbosity=0)
        teardown_test_environment()
    if options.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"{'query':28} {'django µs':>9} {'idle µs':>9} {'captured µs':>11} "
            f"{'captured/idle (IQR)':>21} {'idle/django (IQR)':>21}"
        )
        for name, row in results.items():
            q1, q3 = row["ratio_iqr"]
            i1, i3 = row["idle_ratio_iqr"]
            print(
                f"{name:28} {row['django_us']:9.1f} {row['idle_us']:9.1f} "
                f"{row['captured_us']:11.1f} {row['ratio']:7.3f} ({q1:.3f}-{q3:.3f}) "
                f"{row['idle_ratio']:7.3f} ({i1:.3f}-{i3:.3f})"
            )
    return 0
