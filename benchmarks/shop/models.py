"""Category, Product, Review: what the measured product page reads and the workloads write.

``version`` counts a product's writes, so a reader can tell which state a cached page shows.
``PlainProduct`` has the same columns and no declaration: the same-process baseline for the
cost of ``save()``.

The ``cache_invalidation`` Meta option exists only where that app is installed (Django rejects
unknown Meta names), so the declarations are attached by :func:`_meta` when it is.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import models


def _meta(**declaration: Any) -> type:
    attrs: dict[str, Any] = {"app_label": "bench"}
    if apps.is_installed("cache_invalidation"):
        attrs["cache_invalidation"] = declaration
    return type("Meta", (), attrs)


class Category(models.Model):
    name = models.CharField(max_length=100)

    # A rename reaches every page of the category's products through "related".
    Meta = _meta(tags=["category:{pk}"], related=["products"])


class Product(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    version = models.PositiveIntegerField(default=0)
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="products")
    description = models.TextField(blank=True)

    Meta = _meta(tags=["product:{pk}", "category:{category_id}:products"])


class Review(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField()
    text = models.TextField(blank=True)

    Meta = _meta(tags=["product:{product_id}"])


class PlainProduct(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    version = models.PositiveIntegerField(default=0)
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="+")
    description = models.TextField(blank=True)

    class Meta:
        app_label = "bench"
