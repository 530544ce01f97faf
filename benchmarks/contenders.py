"""Each contender's natural idiom for the same page, the same fan-out entries, the same bulk write.

- ``nocache``: :func:`~benchmarks.shop.pages.product_page` straight from PostgreSQL.
- ``ttl``: ``cache.get_or_set(key, compute, 60)`` on django-redis; nothing is invalidated.
- ``cacheops``: ``@cached_as(<the product>, <its reviews>)``, cacheops' idiom for a value built
  from several querysets; ``QuerySet.update()`` as written (cacheops documents that it does not
  invalidate) and, as a second variant, its ``invalidated_update()``.
- ``cachalot``: nothing to write: every ORM query of the shop's tables is cached.
- ``ours_sync`` / ``ours_celery`` / ``ours_outbox``:
  ``tagged_cache.get_or_set(key, compute, tags=["product:<pk>"])`` with the models' Meta
  declarations; capture on (the default), and in the ``*_nocapture``
  workloads off (the declared tags alone).

Only the selected contender's library is imported, in its own process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connection


def product_page(pk: int) -> dict[str, Any]:
    from .shop.pages import product_page as page  # models load after django.setup()

    return page(pk)

NAMES = ("nocache", "ttl", "cacheops", "cachalot", "ours_sync", "ours_celery", "ours_outbox")

#: Fan-out entries outlive their fill (100,000 entries take about a minute to store); the
#: page itself is cached for ``settings.TTL`` everywhere. cachalot has one global timeout.
FAN_TTL = 600


class Blocked(Exception):
    """Raised instead of computing or querying while peeking at the cache."""


_blocked = threading.local()


@contextmanager
def cache_only() -> Iterator[None]:
    """Within the block, any computation or SQL raises :class:`Blocked`: a read that returns
    was served from the cache."""

    def refuse(*args: Any) -> Any:
        raise Blocked

    _blocked.active = True
    try:
        with connection.execute_wrapper(refuse):
            yield
    finally:
        _blocked.active = False


def fan_value(pk: int, i: int) -> dict[str, Any]:
    """The value of fan-out entry ``i`` (the same size as a page; no query)."""
    if getattr(_blocked, "active", False):
        raise Blocked
    return {"pk": pk, "entry": i, "name": f"Product {pk}", "price": "10.00", "version": 0,
            "category_id": 1, "category": "Category 1", "reviews": 3, "rating": "4.000"}


class Contender:
    name = "nocache"
    #: Whether writes invalidate anything.
    invalidates = False

    def read(self, pk: int) -> dict[str, Any]:
        return product_page(pk)

    def fresh(self, pk: int) -> dict[str, Any]:
        """The page computed from the database, bypassing every cache."""
        return product_page(pk)

    def peek(self, pk: int) -> bool:
        """Whether the page of ``pk`` is served from the cache (computes nothing)."""
        try:
            with cache_only():
                self.read(pk)
        except Blocked:
            return False
        return True

    def fan_read(self, pk: int, i: int) -> Any:
        """Read (filling on a miss) fan-out entry ``i``, which depends on product ``pk``."""
        return None

    def fan_peek(self, pk: int, i: int) -> bool:
        try:
            with cache_only():
                self.fan_read(pk, i)
        except Blocked:
            return False
        return self.fans

    fans = False

    def bulk_variants(self) -> list[tuple[str, Callable[[Any, dict[str, Any]], int]]]:
        """Ways this contender updates many rows: ``(label, fn(queryset, values))``."""
        return [("update()", lambda qs, values: qs.update(**values))]


class TTL(Contender):
    name = "ttl"
    fans = True

    def __init__(self) -> None:
        from django.core.cache import cache

        self.cache = cache

    def read(self, pk: int) -> dict[str, Any]:
        return self.cache.get_or_set(f"pd:{pk}", lambda: product_page(pk), settings.TTL)

    def fan_read(self, pk: int, i: int) -> Any:
        return self.cache.get_or_set(f"fan:{pk}:{i}", lambda: fan_value(pk, i), FAN_TTL)


class Cacheops(Contender):
    name = "cacheops"
    invalidates = True
    fans = True

    def __init__(self) -> None:
        self._fans: dict[int, Callable[[int], Any]] = {}

    def read(self, pk: int) -> dict[str, Any]:
        from cacheops import cached_as

        from .shop.models import Product, Review

        @cached_as(Product.objects.filter(pk=pk), Review.objects.filter(product_id=pk),
                   timeout=settings.TTL)
        def page(pk: int) -> dict[str, Any]:
            return product_page(pk)

        return page(pk)

    def fan_read(self, pk: int, i: int) -> Any:
        fan = self._fans.get(pk)
        if fan is None:
            from cacheops import cached_as

            from .shop.models import Product

            @cached_as(Product.objects.filter(pk=pk), timeout=FAN_TTL)
            def fan(i: int) -> Any:
                return fan_value(pk, i)

            self._fans[pk] = fan
        return fan(i)

    def bulk_variants(self) -> list[tuple[str, Callable[[Any, dict[str, Any]], int]]]:
        return [
            ("update()", lambda qs, values: qs.update(**values)),
            ("invalidated_update()", lambda qs, values: qs.invalidated_update(**values)),
        ]


class Cachalot(Contender):
    name = "cachalot"
    invalidates = True
    fans = True

    def fresh(self, pk: int) -> dict[str, Any]:
        from cachalot.api import cachalot_disabled

        with cachalot_disabled():
            return product_page(pk)

    def fan_read(self, pk: int, i: int) -> Any:
        from .shop.models import Product

        # A distinct query per entry: cachalot keys entries by SQL and parameters. (An always
        # true bound such as version > -1 is compiled away by Django: keep it in range.)
        return list(
            Product.objects.select_related("category").filter(pk=pk, version__lt=1_000_000 + i)
        )


class Ours(Contender):
    invalidates = True
    fans = True
    #: ``get_or_set(capture=...)``: on by default; the ``*_nocapture`` workloads turn it off
    #: and rely on the declared tags alone.
    capture = True

    def __init__(self, name: str) -> None:
        from cache_invalidation import tagged_cache

        self.name = name
        self.cache = tagged_cache

    def read(self, pk: int) -> dict[str, Any]:
        return self.cache.get_or_set(
            f"pd:{pk}", lambda: product_page(pk), tags=[f"product:{pk}"], timeout=settings.TTL,
            capture=self.capture,
        )

    def fan_read(self, pk: int, i: int) -> Any:
        return self.cache.get_or_set(
            f"fan:{pk}:{i}", lambda: fan_value(pk, i), tags=[f"product:{pk}"], timeout=FAN_TTL,
        )


def get(name: str) -> Contender:
    if name == "nocache":
        return Contender()
    if name == "ttl":
        return TTL()
    if name == "cacheops":
        return Cacheops()
    if name == "cachalot":
        return Cachalot()
    if name in ("ours_sync", "ours_celery", "ours_outbox"):
        return Ours(name)
    raise ValueError(f"unknown contender {name!r}; choose one of {', '.join(NAMES)}")
