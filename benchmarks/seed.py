"""Create and fill the template database every contender's database is cloned from.

``python -m benchmarks seed --scale quick|full --db bench_tpl_quick``. Runs with the
``ours_sync`` settings (so this app's own tables exist everywhere) and without invalidation.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from decimal import Decimal


def main(argv: list[str]) -> int:
    from .scale import SCALES

    parser = argparse.ArgumentParser(prog="python -m benchmarks seed")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--db", required=True)
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]

    from . import infra

    os.environ["BENCH_DB_NAME"] = args.db
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings.ours_sync"
    started = time.perf_counter()
    infra.create_database(args.db)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from cache_invalidation import no_invalidation

    from .shop.models import Category, PlainProduct, Product, Review

    call_command("migrate", run_syncdb=True, verbosity=0)
    rng = random.Random(scale.seed)
    with no_invalidation():
        Category.objects.bulk_create(
            Category(name=f"Category {i}") for i in range(1, scale.categories + 1))
        category_ids = list(Category.objects.values_list("pk", flat=True))
        text = "A product worth describing in a sentence or two, as shops do. " * 3
        products = [
            Product(name=f"Product {i}", price=Decimal(rng.randint(100, 99_999)) / 100,
                    category_id=category_ids[i % len(category_ids)], description=text)
            for i in range(1, scale.products + 1)
        ]
        Product.objects.bulk_create(products, batch_size=5_000)
        PlainProduct.objects.bulk_create(
            PlainProduct(name=p.name, price=p.price, category_id=p.category_id,
                         description=text) for p in products[:10])
        product_ids = list(Product.objects.order_by("pk").values_list("pk", flat=True))
        reviews = []
        for pk in product_ids:
            count = rng.randint(0, 2 * scale.reviews_per_product)
            reviews.extend(Review(product_id=pk, rating=rng.randint(1, 5), text="Fine.")
                           for _ in range(count))
        Review.objects.bulk_create(reviews, batch_size=5_000)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # autocommit: statistics for the planner
    connection.close()
    print(f"seeded {args.db}: {scale.categories} categories, {scale.products} products, "
          f"{len(reviews)} reviews in {time.perf_counter() - started:.1f}s")
    return 0
