"""What capture costs on a miss: querysets evaluated plain and inside ``capturing()``.

Capture runs only while a value is computed (a miss); a hit is one ``GET`` and never reaches
it. This measures, for the query shapes capture handles differently (a key lookup, a filter on
a foreign key, a join the compiler adds, an aggregate across a relation, a subquery), the time
of evaluating the queryset with and without an active capture, interleaved round by round in
the same process, and reports the median ratio. The target is below 1.05 (capture under 5 %
of the query's own time).

Runs on the test settings' database (SQLite in memory unless ``DATABASE_URL`` is set, then a
database of its own that it creates and drops); needs no Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def _queries() -> dict[str, Callable[[], Any]]:
    from django.db.models import Count, Exists, OuterRef

    from testproject.shop.models import Category, Product

    first = Category.objects.order_by("pk").first()
    assert first is not None
    pk = first.pk
    product = Product.objects.filter(category_id=pk).first()
    assert product is not None
    return {
        "key lookup": lambda: Product.objects.get(pk=product.pk),
        "foreign key filter": lambda: list(Product.objects.filter(category_id=pk)),
        "order_by a relation": lambda: list(Product.objects.order_by("category__name")[:20]),
        "aggregate across a relation": lambda: Category.objects.aggregate(n=Count("products")),
        "Exists subquery": lambda: list(
            Category.objects.filter(Exists(Product.objects.filter(category=OuterRef("pk"))))[:20]
        ),
    }


def measure(rounds: int, repeat: int) -> dict[str, dict[str, float]]:
    from cache_invalidation.capture import capturing

    results: dict[str, dict[str, float]] = {}
    for name, query in _queries().items():
        plain: list[float] = []
        captured: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeat):
                query()
            plain.append((time.perf_counter() - start) / repeat)
            start = time.perf_counter()
            for _ in range(repeat):
                with capturing():
                    query()
            captured.append((time.perf_counter() - start) / repeat)
        base, ours = statistics.median(plain), statistics.median(captured)
        results[name] = {"plain_us": base * 1e6, "captured_us": ours * 1e6, "ratio": ours / base}
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks capture")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.test.utils import setup_test_environment, teardown_test_environment
    from django.test.utils import setup_databases, teardown_databases

    from decimal import Decimal

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
                    Product(name=f"p{i}", price=Decimal(1), category=categories[i % len(categories)])
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
        print(f"{'query':32} {'plain µs':>10} {'captured µs':>12} {'ratio':>7}")
        for name, row in results.items():
            print(
                f"{name:32} {row['plain_us']:10.1f} {row['captured_us']:12.1f} "
                f"{row['ratio']:7.3f}"
            )
    return 0
