"""The shop's models, each declaring what its changes invalidate.

The pages in :mod:`.views` cache what they render under the tags declared here, so a committed
change to a row drops exactly the pages that showed it.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse


class Category(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"
        cache_invalidation = {
            "tags": ["category:{pk}"],
            "keys": ["category:{pk}:listing"],
        }

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("shop:category", args=[self.pk])


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    class Meta:
        ordering = ["name"]
        cache_invalidation = {"tags": ["tag:{pk}"]}

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="products")
    tags = models.ManyToManyField(Tag, related_name="products", blank=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]
        cache_invalidation = {
            # A move between categories yields the tags of both categories.
            "tags": ["product:{pk}", "category:{category_id}:products"],
            "keys": ["product:{pk}:detail"],
            "on_fields": {
                "price": ["pricing:{category_id}"],
                "tags": ["product:{pk}:tags"],
            },
        }

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("shop:product", args=[self.pk])


class Review(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    text = models.TextField()

    class Meta:
        ordering = ["-pk"]
        cache_invalidation = {"tags": ["product:{product_id}", "review:{pk}"]}

    def __str__(self) -> str:
        return f"{self.rating}/5 for {self.product}"


class Profile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    display_name = models.CharField(max_length=100)

    class Meta:
        ordering = ["display_name"]
        cache_invalidation = {"tags": ["profile:{user_id}"]}

    def __str__(self) -> str:
        return self.display_name
