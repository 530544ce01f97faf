"""No stale set and no herd, shown with barriers at the exact interleavings."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from cache_invalidation import TaggedCache, no_invalidation
from testproject.shop.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["default", "locmem"])
def alias(request, settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": request.param}
    return request.param


@pytest.fixture
def product():
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        return Product.objects.create(name="old name", price=Decimal("1.00"), category=category)


def run_in_thread(target):
    result: dict = {}

    def body():
        try:
            result["value"] = target()
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread, result


@pytest.mark.parametrize("declared_tags", [True, False], ids=["declared", "captured"])
def test_reader_that_read_the_old_row_cannot_store_it_after_the_invalidation(
    alias, product, declared_tags
):
    cache = TaggedCache(alias)
    key = f"product:{product.pk}:name"
    read_old_row = threading.Event()
    invalidated = threading.Event()

    def compute():
        name = Product.objects.get(pk=product.pk).name  # 1. reader reads the old row
        read_old_row.set()
        assert invalidated.wait(10)  # 3. ...and stores only after the invalidation
        return name

    tags = [f"product:{product.pk}"] if declared_tags else []
    thread, result = run_in_thread(lambda: cache.get_or_set(key, compute, tags=tags))
    assert read_old_row.wait(10)
    product.name = "new name"  # 2. writer commits; sync transport applies the invalidation
    product.save()
    invalidated.set()
    thread.join(10)
    assert result == {"value": "old name"}  # the slow reader gets what it computed...
    assert cache.get(key) is None  # ...but it was never stored as fresh
    assert cache.get_or_set(key, lambda: Product.objects.get(pk=product.pk).name,
                            tags=tags) == "new name"


def test_fifty_concurrent_misses_compute_once(alias):
    cache = TaggedCache(alias)
    start = threading.Barrier(50)
    calls = []
    results = []

    def compute():
        calls.append(1)
        time.sleep(0.3)  # long enough for every other miss to arrive meanwhile
        return "value"

    def reader():
        start.wait()
        results.append(cache.get_or_set("hot", compute, tags=["hot"], capture=False))

    threads = [threading.Thread(target=reader) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(calls) == 1
    assert results == ["value"] * 50


def test_stale_while_revalidate_serves_the_previous_value_while_one_recomputes(alias):
    cache = TaggedCache(alias)
    assert cache.get_or_set("page", lambda: "v1", tags=["t"], stale_while_revalidate=True) == "v1"
    cache.invalidate_tags(["t"])
    computing = threading.Event()
    finish = threading.Event()

    def slow():
        computing.set()
        assert finish.wait(10)
        return "v2"

    thread, result = run_in_thread(
        lambda: cache.get_or_set("page", slow, tags=["t"], stale_while_revalidate=True)
    )
    assert computing.wait(10)
    started = time.monotonic()
    assert cache.get_or_set("page", lambda: "never", tags=["t"], stale_while_revalidate=True) == "v1"
    assert time.monotonic() - started < 3  # did not wait LEASE_WAIT (5 s) for the holder
    finish.set()
    thread.join(10)
    assert result == {"value": "v2"}
    assert cache.get("page") == "v2"


def test_waiters_get_the_lease_holders_value_without_stale(alias):
    cache = TaggedCache(alias)
    computing = threading.Event()
    finish = threading.Event()

    def slow():
        computing.set()
        assert finish.wait(10)
        return "fresh"

    holder, _ = run_in_thread(lambda: cache.get_or_set("k", slow, tags=["t"]))
    assert computing.wait(10)
    waiter, waited = run_in_thread(lambda: cache.get_or_set("k", lambda: "other", tags=["t"]))
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting for the lease holder, not computing
    finish.set()
    holder.join(10)
    waiter.join(10)
    assert waited == {"value": "fresh"}


def test_a_failed_computation_releases_the_lease(alias):
    cache = TaggedCache(alias)

    def boom():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        cache.get_or_set("k", boom, tags=["t"])
    started = time.monotonic()
    assert cache.get_or_set("k", lambda: "ok", tags=["t"]) == "ok"
    assert time.monotonic() - started < 3  # nobody waited LEASE_WAIT (5 s) for a dead lease
