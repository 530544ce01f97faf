"""The local cache (L1) in one process: coherence rules, failure semantics, threads, surfaces.

Everything runs against the real Redis of the suite (or a private ``redis-server`` where the
test stops it). "Another process" is played by a second ``RedisTagBackend`` on the same
cache that this process's local cache does not listen to: what it does reaches the local
cache only through the announcements, as another process's writes would.
(``tests/test_local_processes.py`` does it with real processes and gunicorn.)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template, TemplateSyntaxError

from cache_invalidation import cached, localcache, tagged_cache
from cache_invalidation.backends.redis import RedisTagBackend
from cache_invalidation.checks import check_settings
from tests.conftest import wait_for

LOCAL = {"MAX_AGE": 30, "HEARTBEAT": 0.5}


@pytest.fixture
def local_settings(settings: Any) -> Any:
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "LOCAL_CACHE": dict(LOCAL)}
    return settings


def live_with(settings: Any, **options: Any) -> localcache.LocalCache:
    """Turn the local cache on with ``options`` and wait until its subscriber is live."""
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "LOCAL_CACHE": options}
    cache = localcache.local_for("default")
    assert cache.wait_live(), "the subscriber did not go live"
    return cache


@pytest.fixture
def local(local_settings: Any) -> localcache.LocalCache:
    cache = localcache.local_for("default")
    assert cache.wait_live(), "the subscriber did not go live"
    return cache


@pytest.fixture
def other() -> RedisTagBackend:
    """The tag index as another process sees it (no local cache listens to it)."""
    return RedisTagBackend(caches["default"], 3600)


class Source:
    """A value that changes when the test says so; counts computations."""

    def __init__(self) -> None:
        self.version = 1
        self.computed = 0

    def __call__(self) -> dict[str, int]:
        self.computed += 1
        return {"version": self.version}


def read(key: str, source: Source, tags: list[str] | None = None) -> int:
    return int(tagged_cache.get_or_set(key, source, tags=tags or ["t"], local=True)["version"])


def test_a_local_hit_is_served_from_memory_without_a_round_trip(local, redis_client) -> None:
    source = Source()
    assert read("k", source) == 1
    assert not localcache.served_locally()
    assert read("k", source) == 1
    assert localcache.served_locally()
    # Gone from Redis behind the app's back (nothing announced): still served from memory.
    redis_client.delete(local.backend.made_key("k"))
    assert read("k", source) == 1
    assert localcache.served_locally()
    assert source.computed == 1


def test_each_local_hit_returns_its_own_copy(local) -> None:
    tagged_cache.get_or_set("k", lambda: {"items": [1]}, tags=["t"], local=True)
    first = tagged_cache.get_or_set("k", dict, tags=["t"], local=True)
    first["items"].append(2)
    assert tagged_cache.get_or_set("k", dict, tags=["t"], local=True) == {"items": [1]}


def test_an_int_is_kept_as_django_redis_stores_it(local) -> None:
    assert tagged_cache.get_or_set("n", lambda: 41, tags=["t"], local=True) == 41
    assert tagged_cache.get_or_set("n", lambda: 0, tags=["t"], local=True) == 41
    assert localcache.served_locally()


def test_another_process_invalidating_a_tag_drops_the_local_copy(local, other) -> None:
    source = Source()
    read("k", source, ["product:1"])
    read("k", source, ["product:1"])
    assert localcache.served_locally()
    source.version = 2
    other.invalidate(["product:1"], [])
    assert wait_for(lambda: local.get("k") is None, timeout=5)
    assert read("k", source, ["product:1"]) == 2


def test_an_unrelated_invalidation_keeps_the_local_copy(local, other) -> None:
    source = Source()
    read("k", source, ["product:1"])
    other.invalidate(["product:2"], ["some-other-key"])
    seq = local._seq
    assert wait_for(lambda: local._seq > seq or local._seq > 0, timeout=5)
    assert read("k", source, ["product:1"]) == 1
    assert localcache.served_locally()


def test_deletes_and_overwrites_by_another_process_are_announced(local, other) -> None:
    source = Source()
    read("a", source)
    read("b", source)
    other.delete("a")
    other.store("b", {"version": 7}, ["t"], 60)  # an unconditional store: tagged_cache.set()
    assert wait_for(lambda: local.get("a") is None and local.get("b") is None, timeout=5)
    assert read("b", source) == 7


def test_the_writing_process_drops_its_copies_when_the_script_returns(local) -> None:
    """Rule 4, at the exact interleaving: announcements are held back while the writer
    invalidates, so only the drop at apply time can make the next read miss."""
    source = Source()
    read("k", source)
    held, release = threading.Event(), threading.Event()
    subscriber = local._subscriber
    assert subscriber is not None
    deliver = subscriber._announced

    def hold(announcement: Any) -> None:
        held.set()
        release.wait(5)
        deliver(announcement)

    subscriber._announced = hold
    try:
        source.version = 2
        tagged_cache.invalidate_tags(["t"])
        assert local.get("k") is None
        assert read("k", source) == 2  # computed again, from Redis' point of view fresh
        assert held.wait(5)
    finally:
        release.set()
        subscriber._announced = deliver


def test_a_value_read_before_an_invalidation_is_not_kept(local, other, monkeypatch) -> None:
    """Rule 3: the read happens, then another process invalidates and the announcement is
    processed, then the fill: it is refused, and the old value is returned to this caller
    only."""
    source = Source()
    tagged_cache.set("k", {"version": 1}, tags=["t"])
    peek_raw = local.backend.peek_raw

    def read_then_invalidate(key: str) -> Any:
        found = peek_raw(key)
        seq = local._seq
        other.invalidate(["t"], [])
        assert wait_for(lambda: local._seq > seq, timeout=5)
        return found

    monkeypatch.setattr(local.backend, "peek_raw", read_then_invalidate)
    assert read("k", source) == 1  # this caller read before the invalidation
    monkeypatch.undo()
    assert local.get("k") is None
    assert local.counts["refused"] == 1
    source.version = 2
    assert read("k", source) == 2


def test_a_value_stored_before_an_invalidation_is_not_kept(local, other, monkeypatch) -> None:
    """Rule 3 on the compute path: stored in Redis, then invalidated elsewhere and announced,
    then the local fill: refused."""
    source = Source()
    store = local.backend.store

    def store_then_invalidate(*args: Any, **kwargs: Any) -> bool:
        stored = store(*args, **kwargs)
        seq = local._seq
        other.invalidate(["t"], [])
        assert wait_for(lambda: local._seq > seq, timeout=5)
        return stored

    monkeypatch.setattr(local.backend, "store", store_then_invalidate)
    assert read("k", source) == 1
    monkeypatch.undo()
    assert local.get("k") is None
    source.version = 2
    assert read("k", source) == 2


def test_a_skipped_sequence_number_flushes(local, redis_client) -> None:
    source = Source()
    read("k", source)
    message = {"s": str(local._seq + 5), "e": local._epoch}
    redis_client.publish(local.backend.channel(), json.dumps(message))
    assert wait_for(lambda: local.counts["flush:gap"] == 1, timeout=5)
    assert local.get("k") is None


def test_a_new_epoch_flushes(local, redis_client) -> None:
    source = Source()
    read("k", source)
    message = {"s": str(local._seq + 1), "e": "another-epoch"}
    redis_client.publish(local.backend.channel(), json.dumps(message))
    assert wait_for(lambda: local.counts["flush:epoch"] == 1, timeout=5)
    assert local.get("k") is None


def test_an_unreadable_announcement_flushes_and_resubscribes(local, redis_client) -> None:
    source = Source()
    read("k", source)
    redis_client.publish(local.backend.channel(), b"\xff not json")
    assert wait_for(lambda: local.counts["flush:unreadable"] == 1, timeout=5)
    assert local.get("k") is None
    assert local.wait_live()
    read("k", source)
    assert read("k", source) == 1 and localcache.served_locally()


def test_killed_subscriptions_flush_and_bypass_until_resubscribed(local, other, redis_client):
    source = Source()
    read("k", source)
    read("k", source)
    assert localcache.served_locally()
    # Only this subscriber's connection, found by the name it gives itself: killing every
    # pubsub client of the shared server would cut the Celery workers of other test runs too.
    name = local._subscriber.client_name
    ours = [c["id"] for c in redis_client.client_list(_type="pubsub") if c["name"] == name]
    assert len(ours) == 1, redis_client.client_list(_type="pubsub")
    redis_client.client_kill_filter(_id=ours[0])
    assert wait_for(lambda: local.counts["flush:disconnected"] >= 1, timeout=5)
    # Whatever is invalidated while the subscription is down can never be served locally.
    source.version = 2
    other.invalidate(["t"], [])
    assert read("k", source) == 2
    assert local.wait_live()
    assert read("k", source) == 2


def test_a_redis_restart_flushes_and_the_subscriber_comes_back(private_redis, settings):
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": private_redis.url,
            "KEY_PREFIX": "citest-local-restart",
        },
    }
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "LOCAL_CACHE": dict(LOCAL)}
    local = localcache.local_for("default")
    assert local.wait_live()
    source = Source()
    read("k", source)
    read("k", source)
    assert localcache.served_locally()
    private_redis.stop()
    assert wait_for(lambda: not local.live, timeout=5)
    assert len(local) == 0
    private_redis.start()
    assert local.wait_live(10)
    assert local.counts["flush:disconnected"] >= 1
    read("k", source)
    assert read("k", source) == 1 and localcache.served_locally()


def test_an_unanswered_ping_flushes(private_redis, settings) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": private_redis.url,
            "KEY_PREFIX": "citest-local-ping",
        },
    }
    settings.CACHE_INVALIDATION = {
        **settings.CACHE_INVALIDATION,
        "LOCAL_CACHE": {"MAX_AGE": 30, "HEARTBEAT": 0.2},
    }
    local = localcache.local_for("default")
    assert local.wait_live()
    read("k", Source())
    # The server answers nobody for 1.5 s: the subscriber's ping goes unanswered.
    redis.Redis.from_url(private_redis.url).execute_command("CLIENT", "PAUSE", 1500, "ALL")
    assert wait_for(lambda: local.counts["flush:ping"] >= 1, timeout=5)
    assert len(local) == 0
    assert local.wait_live(10)


def test_max_age_caps_a_local_copy(local_settings) -> None:
    local = live_with(local_settings, MAX_AGE=0.2)
    source = Source()
    read("k", source)
    assert local.get("k") is not None
    time.sleep(0.3)
    assert local.get("k") is None
    assert local.counts["expired"] == 1


def test_the_entry_timeout_caps_a_local_copy_too(local) -> None:
    tagged_cache.get_or_set("k", Source(), tags=["t"], timeout=1, local=True)
    assert local._entries["k"].deadline - time.monotonic() <= 1


def test_max_entries_evicts_the_least_recently_used(local_settings) -> None:
    local = live_with(local_settings, MAX_ENTRIES=2)
    source = Source()
    read("a", source)
    read("b", source)
    read("a", source)  # a is now the most recently used
    read("c", source)
    assert local.get("b") is None
    assert local.get("a") is not None and local.get("c") is not None
    assert local.counts["evicted"] == 1
    assert len(local) == 2 and not local._by_name.get(local.backend.made_key("b"))


def test_threads_never_read_a_value_older_than_an_applied_invalidation(local) -> None:
    """Eight readers, one writer in the same process: after invalidate_tags returns, no read
    that starts later may return an older version."""
    truth = {"version": 0}
    applied = [0]
    errors: list[str] = []
    stop = threading.Event()

    def compute() -> dict[str, int]:
        return {"version": truth["version"]}

    def reader() -> None:
        while not stop.is_set():
            floor = applied[0]
            got = tagged_cache.get_or_set("k", compute, tags=["t"], local=True)["version"]
            if got < floor:
                errors.append(f"read version {got} after version {floor} was invalidated")

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, 41):
            truth["version"] = version
            tagged_cache.invalidate_tags(["t"])
            applied[0] = version
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors[:5]
    assert local.counts["hit"] > 0


def test_aget_or_set_answers_a_local_hit_on_the_event_loop(local) -> None:
    source = Source()

    async def twice() -> tuple[int, int, bool]:
        first = await tagged_cache.aget_or_set("k", source, tags=["t"], local=True)
        second = await tagged_cache.aget_or_set("k", source, tags=["t"], local=True)
        return first["version"], second["version"], localcache.served_locally()

    assert asyncio.run(twice()) == (1, 1, True)
    assert source.computed == 1


def test_cached_and_cachetagged_take_local(local) -> None:
    calls = []

    @cached(tags=["t"], local=True)
    def price(pk: int) -> int:
        calls.append(pk)
        return pk * 10

    assert price(3) == 30 and price(3) == 30
    assert localcache.served_locally() and calls == [3]
    template = Template(
        "{% load cache_invalidation %}{% cachetagged 60 box tags='t' local=True %}"
        "{{ n }}{% endcachetagged %}"
    )
    assert template.render(Context({"n": 1})) == "1"
    assert template.render(Context({"n": 2})) == "1"
    assert localcache.served_locally()
    with pytest.raises(TemplateSyntaxError, match="local='yes' resolved to 'yes'"):
        Template(
            "{% load cache_invalidation %}{% cachetagged 60 box tags='t' local='yes' %}"
            "x{% endcachetagged %}"
        ).render(Context())


def test_local_default_makes_every_call_local(local_settings) -> None:
    live_with(local_settings, DEFAULT=True)
    source = Source()
    tagged_cache.get_or_set("k", source, tags=["t"])
    tagged_cache.get_or_set("k", source, tags=["t"])
    assert localcache.served_locally()
    assert source.computed == 1
    # local=False: a Redis hit, even with the entry in memory (Redis no longer has it: a miss)
    caches["default"].delete("k")
    tagged_cache.get_or_set("k", source, tags=["t"], local=False)
    assert source.computed == 2 and not localcache.served_locally()


def test_every_deleting_path_is_announced_with_consecutive_numbers(local, other, redis_client):
    """invalidate (a big tag is renamed and drained), delete, set and pattern deletion each
    publish; the numbers have no gaps, so a subscriber can tell a lost message."""
    listener = redis_client.pubsub()
    listener.subscribe(local.backend.channel())
    assert listener.get_message(timeout=2)["type"] == "subscribe"
    for i in range(300):  # more members than one call deletes: the rest is drained
        tagged_cache.set(f"big:{i}", i, tags=["big"])
    messages = []
    while (message := listener.get_message(timeout=0.2)) is not None:
        messages.append(message)
    other.invalidate(["big"], ["plain"])
    other.delete("big:0")
    other.store("x", 1, ["t"], 60)
    other.unlink([local.backend.made_key("x").encode()])
    while (message := listener.get_message(timeout=0.5)) is not None:
        messages.append(message)
    listener.close()
    decoded = [json.loads(m["data"]) for m in messages if m["type"] == "message"]
    numbers = [int(d["s"]) for d in decoded]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    names = [name for d in decoded[300:] for name in d.get("t", []) + d.get("k", [])]
    made = local.backend.made_key
    assert local.backend.tag_names(["big"])[0] in names and made("plain") in names
    drained = {n for d in decoded[301:] for n in d.get("k", []) if n.startswith(made("big:"))}
    assert len(drained) >= 100  # the members the drain deleted, announced by key


def test_local_true_without_local_cache_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="LOCAL_CACHE"):
        tagged_cache.get_or_set("k", 1, tags=["t"], local=True)


def test_backends_without_pub_sub_refuse_the_local_cache(settings) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "LOCAL_CACHE": {}}
    errors = [e for e in check_settings() if e.id == "cache_invalidation.E016"]
    assert len(errors) == 1 and "Pub/Sub" in errors[0].msg and "LocMemCache" in errors[0].msg
    with pytest.raises(ImproperlyConfigured, match="no Pub/Sub"):
        tagged_cache.get_or_set("k", 1, tags=["t"], local=True)


@pytest.mark.parametrize(
    ("local_cache", "message"),
    [
        ([], "must be None or a dict, not list"),
        ({"MAX_ENTRYS": 5}, "unknown key 'MAX_ENTRYS'"),
        ({"MAX_ENTRIES": 0}, "['MAX_ENTRIES'] must be a positive integer, got 0"),
        ({"MAX_AGE": "60"}, "['MAX_AGE'] must be a positive number of seconds, got '60'"),
        ({"HEARTBEAT": True}, "['HEARTBEAT'] must be a positive number of seconds, got True"),
        ({"DEFAULT": 1}, "['DEFAULT'] must be True or False, got 1"),
    ],
)
def test_a_malformed_local_cache_setting_is_named(settings, local_cache, message) -> None:
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "LOCAL_CACHE": local_cache}
    errors = [e.msg for e in check_settings() if e.id == "cache_invalidation.E015"]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.django_db
def test_status_dashboard_and_metrics_show_the_local_caches(local, client, admin_user) -> None:
    from io import StringIO

    from django.core.management import call_command
    from prometheus_client import CollectorRegistry, generate_latest

    from cache_invalidation import health
    from cache_invalidation.views import _Collector

    source = Source()
    read("k", source)
    read("k", source)
    tagged_cache.invalidate_tags(["nothing-cached"])
    local.flush_counts()
    found = health.status()["local"]
    assert found["used"] and found["subscribers"] >= 1
    assert found["hits"] >= 1 and found["flushes"].get("start", 0) >= 1
    assert 0 < found["hit_rate"] < 1
    out = StringIO()
    call_command("cache_invalidation_status", stdout=out)
    assert "Local cache: " in out.getvalue() and "subscriber(s)" in out.getvalue()
    client.force_login(admin_user)
    page = client.get("/admin/cache_invalidation/manualinvalidation/invalidate/")
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="ci-local-subscribers"' in body and "hit rate" in body

    registry = CollectorRegistry()
    registry.register(_Collector())
    text = generate_latest(registry).decode()
    assert "cache_invalidation_local_subscribers" in text
    assert 'cache_invalidation_local_reads_total{result="hit"}' in text
    assert 'cache_invalidation_local_flushes_total{cause="start"}' in text
