"""tagged_cache on django-redis (tag index) and on LocMem (version stamps): same behaviour."""

from __future__ import annotations

import threading

import pytest
import redis
from django.core.cache import caches

from cache_invalidation import TaggedCache, tagged_cache
from cache_invalidation.tagging import backend_for


@pytest.fixture(params=["default", "locmem"])
def tc(request) -> TaggedCache:
    return TaggedCache(request.param)


def test_set_get_and_invalidate_by_tag(tc):
    tc.set("p1", {"name": "Lamp"}, tags=["product:1", "category:3"])
    tc.set("p2", "Chair", tags=["product:2", "category:3"])
    tc.set("p3", 3, tags=["product:3"])
    assert tc.get("p1") == {"name": "Lamp"}
    tc.invalidate_tags(["category:3"])
    assert tc.get("p1") is None
    assert tc.get("p2", "gone") == "gone"
    assert tc.get("p3") == 3


def test_plain_keys_are_deleted_in_the_same_call(tc):
    tc.set("a", 1, tags=["t"])
    caches[tc.alias].set("plain", "x")
    tc.invalidate_many(tags=["t"], keys=["plain"])
    assert tc.get("a") is None
    assert caches[tc.alias].get("plain") is None


def test_get_or_set_computes_once_then_hits(tc):
    calls = []

    def compute():
        calls.append(1)
        return "value"

    assert tc.get_or_set("k", compute, tags=["t"]) == "value"
    assert tc.get_or_set("k", compute, tags=["t"]) == "value"
    assert len(calls) == 1
    tc.invalidate_tags(["t"])
    assert tc.get_or_set("k", compute, tags=["t"]) == "value"
    assert len(calls) == 2


def test_value_computed_across_an_invalidation_is_not_stored(tc):
    """Reader misses, a writer invalidates while the reader computes, the reader stores:
    the stored value must not be served as fresh."""

    def compute_while_invalidated():
        tc.invalidate_tags(["product:1"])  # the commit + invalidation lands mid-computation
        return "old row"

    assert tc.get_or_set("page", compute_while_invalidated, tags=["product:1"]) == "old row"
    assert tc.get("page") is None
    assert tc.get_or_set("page", lambda: "new row", tags=["product:1"]) == "new row"
    assert tc.get("page") == "new row"


def test_delete(tc):
    tc.set("k", 1, tags=["t"])
    assert tc.delete("k") is True
    assert tc.get("k") is None


def test_timeout_must_be_positive(tc):
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        tc.set("k", 1, timeout=0)


def test_tags_must_be_a_list(tc):
    with pytest.raises(TypeError, match="not the string 'abc'"):
        tc.set("k", 1, tags="abc")


def test_plain_django_cache_reads_what_tagged_cache_wrote_on_redis():
    tagged_cache.set("shared", {"a": 1}, tags=["t"])
    assert caches["default"].get("shared") == {"a": 1}
    caches["default"].set("written-plain", 5)
    assert tagged_cache.get("written-plain") == 5


def _raw(key: str) -> str:
    return str(caches["default"].client.make_key(key))


def test_every_key_written_has_a_ttl_capped_at_max_ttl(settings, redis_client):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TTL": 100}
    tagged_cache.set("forever", 1, tags=["t1"])  # timeout=None means MAX_TTL
    tagged_cache.set("long", 1, tags=["t1"], timeout=10_000)
    tagged_cache.set("short", 1, tags=["t2"], timeout=5)
    assert 90_000 < redis_client.pttl(_raw("forever")) <= 100_000
    assert 90_000 < redis_client.pttl(_raw("long")) <= 100_000
    assert 0 < redis_client.pttl(_raw("short")) <= 5_000
    # The tag index outlives its members, and expires too.
    assert 100_000 < redis_client.pttl(_raw("ci:t:t1")) <= 160_000
    tagged_cache.invalidate_tags(["t1"])
    assert 100_000 < redis_client.pttl(_raw("ci:v:t1")) <= 160_000
    for key in redis_client.scan_iter(match=f"{settings.KEY_PREFIX}*"):
        assert redis_client.pttl(key) > 0, key


def test_invalidation_removes_the_index_and_reports_deleted_count(redis_client):
    for i in range(3):
        tagged_cache.set(f"m{i}", i, tags=["big"])
    assert tagged_cache.invalidate_tags(["big"]) == 3
    assert not redis_client.exists(_raw("ci:t:big"))


def test_invalidation_with_redis_down_raises_even_with_ignore_exceptions(settings):
    """IGNORE_EXCEPTIONS must not turn a failed delete into a reported success."""
    settings.CACHES = {
        **settings.CACHES,
        "down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.5},
        },
    }
    down = TaggedCache("down")
    assert caches["down"].delete("x") is None  # what django-redis itself reports
    with pytest.raises(redis.ConnectionError):
        down.invalidate_tags(["t"])
    # Reads and writes follow IGNORE_EXCEPTIONS: a miss, and nothing stored.
    assert down.get("x", "default") == "default"
    assert down.set("x", 1, tags=["t"]) is False


def test_backend_choice():
    assert type(backend_for("default")).__name__ == "RedisTagBackend"
    assert type(backend_for("locmem")).__name__ == "StampBackend"


def test_async_twins(tc):
    import asyncio

    async def scenario():
        await tc.aset("a", 1, tags=["t"])
        first = await tc.aget("a")

        async def compute():
            return "computed"

        made = await tc.aget_or_set("b", compute, tags=["t"])
        again = await tc.aget_or_set("b", lambda: "not used", tags=["t"])
        await tc.ainvalidate_tags(["t"])
        return first, made, again, await tc.aget("a"), await tc.aget("b")

    assert asyncio.run(scenario()) == (1, "computed", "computed", None, None)


def test_concurrent_sets_and_invalidations_never_leave_a_stale_entry(tc):
    """Writers store while another thread invalidates: after the final invalidation nothing
    stored before it may remain."""
    barrier = threading.Barrier(3)

    def writer(n):
        barrier.wait()
        for i in range(200):
            tc.set(f"w{n}:{i}", i, tags=["hot"])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    tc.invalidate_tags(["hot"])
    assert all(tc.get(f"w{n}:{i}") is None for n in range(2) for i in range(200))
