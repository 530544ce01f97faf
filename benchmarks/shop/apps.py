from __future__ import annotations

from django.apps import AppConfig


class BenchShopConfig(AppConfig):
    name = "benchmarks.shop"
    label = "bench"
    default_auto_field = "django.db.models.BigAutoField"
