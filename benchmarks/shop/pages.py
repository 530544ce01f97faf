"""The page every contender serves: a product with its category and review statistics."""

from __future__ import annotations

from typing import Any

from django.db.models import Avg, Count

from .models import Product, Review


def product_page(pk: int) -> dict[str, Any]:
    """Two queries: the product joined to its category, then its reviews' count and average."""
    product = Product.objects.select_related("category").get(pk=pk)
    stats = Review.objects.filter(product_id=pk).aggregate(count=Count("id"), average=Avg("rating"))
    return {
        "pk": product.pk,
        "name": product.name,
        "price": str(product.price),
        "version": product.version,
        "category_id": product.category_id,
        "category": product.category.name,
        "reviews": stats["count"],
        "rating": None if stats["average"] is None else f"{stats['average']:.3f}",
    }
