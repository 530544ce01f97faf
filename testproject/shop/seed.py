"""Demo data, written idempotently: running :func:`seed` again changes nothing that matches.

Rows are found by a natural key (slug, name) and saved only when a value differs, so a second
run emits no invalidation; a value edited since (a price changed in the admin) is set back and
invalidates what showed it. Everything is written in one transaction: one invalidation batch.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from django.db import models, transaction

from .models import Category, Product, Review, Tag

CATEGORIES = [
    ("coffee", "Coffee"),
    ("tea", "Tea"),
    ("equipment", "Equipment"),
]

TAGS = ["bestseller", "fair trade", "new", "organic"]

# (category slug, name, price, tags, description)
PRODUCTS = [
    (
        "coffee",
        "Colombia Huila",
        "12.50",
        ["fair trade", "bestseller"],
        "Caramel and red apple, medium roast.",
    ),
    ("coffee", "Ethiopia Yirgacheffe", "14.00", ["organic"], "Jasmine and lemon, light roast."),
    ("coffee", "House Espresso", "10.90", ["bestseller"], "Chocolate and hazelnut, dark roast."),
    ("coffee", "Kenya AA", "16.20", ["new"], "Blackcurrant and grapefruit."),
    ("tea", "Darjeeling First Flush", "18.00", ["organic"], "Floral, light and bright."),
    ("tea", "Earl Grey", "7.50", ["bestseller"], "Black tea with bergamot."),
    ("tea", "Gyokuro", "24.00", ["new"], "Shaded Japanese green tea."),
    ("tea", "Rooibos Vanilla", "6.90", ["organic", "fair trade"], "Caffeine free."),
    ("equipment", "Burr Grinder", "89.00", ["bestseller"], "Forty grind settings."),
    ("equipment", "Gooseneck Kettle", "49.00", [], "Pours slowly and precisely."),
    ("equipment", "Pour-over Dripper", "22.00", ["new"], "Ceramic, size 02."),
    ("equipment", "Tea Infuser", "8.50", [], "Stainless steel mesh."),
]

# (product name, rating, text)
REVIEWS = [
    ("Colombia Huila", 5, "My daily coffee."),
    ("Colombia Huila", 4, "Sweet and balanced."),
    ("Ethiopia Yirgacheffe", 5, "Tastes like tea, in the best way."),
    ("House Espresso", 3, "A bit too dark for me."),
    ("Earl Grey", 4, "Classic."),
    ("Gyokuro", 5, "Worth every cent."),
    ("Burr Grinder", 4, "Consistent grind, a little loud."),
    ("Gooseneck Kettle", 5, "Beautiful pour."),
]


def upsert(
    model: type[models.Model], lookup: dict[str, Any], values: dict[str, Any], stats: Counter[str]
) -> Any:
    """Find the row by ``lookup``; create it, or save it only if one of ``values`` differs."""
    name = model._meta.verbose_name_plural
    obj = model._default_manager.filter(**lookup).first()
    if obj is None:
        obj = model._default_manager.create(**lookup, **values)
        stats[f"{name} created"] += 1
        return obj
    changed = [field for field, value in values.items() if getattr(obj, field) != value]
    if changed:
        for field in changed:
            setattr(obj, field, values[field])
        obj.save(update_fields=changed)
        stats[f"{name} updated"] += 1
    return obj


@transaction.atomic
def seed() -> Counter[str]:
    """Create or restore the demo rows; return counts such as ``{"products created": 12}``."""
    stats: Counter[str] = Counter()
    categories = {
        slug: upsert(Category, {"slug": slug}, {"name": name}, stats) for slug, name in CATEGORIES
    }
    tags = {name: upsert(Tag, {"name": name}, {}, stats) for name in TAGS}
    products = {}
    for slug, name, price, tag_names, description in PRODUCTS:
        product = upsert(
            Product,
            {"name": name},
            {
                "category": categories[slug],
                "price": Decimal(price),
                "description": description,
            },
            stats,
        )
        wanted = {tags[t].pk for t in tag_names}
        if set(product.tags.values_list("pk", flat=True)) != wanted:
            product.tags.set(wanted)
            stats["products tagged"] += 1
        products[name] = product
    for product_name, rating, text in REVIEWS:
        upsert(Review, {"product": products[product_name], "text": text}, {"rating": rating}, stats)
    return stats
