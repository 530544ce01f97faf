"""A page for tests/test_panel.py: reads, writes and invalidates through the app."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from cache_invalidation import invalidate, tagged_cache


def show_toolbar(request: HttpRequest) -> bool:
    return True


def page(request: HttpRequest) -> HttpResponse:
    value = tagged_cache.get_or_set("panel:page", lambda: "computed", tags=["panel:product:7"])
    tagged_cache.get("panel:plain")
    if request.GET.get("change"):
        with transaction.atomic():
            invalidate(tags=["panel:category:3"], keys=["panel:home"])
    return HttpResponse(f"<html><body>{value}</body></html>")


urlpatterns = [
    path("page/", page),
    path("__debug__/", include("debug_toolbar.urls")),
]
