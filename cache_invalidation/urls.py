"""URLs of the app: ``path("cache-invalidation/", include("cache_invalidation.urls"))``.

``metrics/`` serves :func:`cache_invalidation.views.metrics_view` (Prometheus text format),
which answers only staff users and requests bearing ``METRICS_TOKEN``.
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "cache_invalidation"

urlpatterns = [
    path("metrics/", views.metrics_view, name="metrics"),
]
