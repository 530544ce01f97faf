"""The shared metrics store: counters per model move when writes commit, lag percentiles come
from real applies, and recording a batch costs one pipelined round trip to Redis."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from decimal import Decimal

import pytest
import redis
from django.db import transaction
from redis.client import Pipeline, Redis

from cache_invalidation import InvalidationEvent, invalidate, metrics, no_invalidation
from cache_invalidation.apply import apply_events
from cache_invalidation.models import DeadLetter
from testproject.shop.models import Category, Product
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ZERO = dict.fromkeys(metrics.NAMES, 0)


def counts(model: str, window: str = "hour") -> dict[str, int]:
    found = metrics.snapshot()["per_model"].get(model)
    return found[window] if found else dict(ZERO)


@pytest.fixture
def product():
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        return Product.objects.create(name="Arc", price=Decimal("1.00"), category=category)


def test_counters_move_when_a_save_commits_not_before(product):
    with transaction.atomic():
        product.price = Decimal("2.00")
        product.save()
        assert counts("shop.Product") == ZERO  # nothing until the commit
    assert counts("shop.Product") == {**ZERO, "published": 1, "applied": 1}
    assert counts("shop.Product", "day") == {**ZERO, "published": 1, "applied": 1}

    with transaction.atomic():
        product.save()
        transaction.set_rollback(True)
    assert counts("shop.Product")["published"] == 1  # a rollback counts nothing

    invalidate(tags=["home"])
    snapshot = metrics.snapshot()
    assert snapshot["per_model"]["manual"]["hour"] == {**ZERO, "published": 1, "applied": 1}
    assert snapshot["totals"]["hour"] == {**ZERO, "published": 2, "applied": 2}
    assert snapshot["lag_ms"]["samples"] == 2
    assert metrics.read() == {**ZERO, "published": 2, "applied": 2}


def test_duplicates_are_counted_per_model():
    event = InvalidationEvent(type="shop.Product.updated", entity_type="shop.Product",
                              tags=("product:1",))
    apply_events([event])
    apply_events([event])  # a redelivery
    assert counts("shop.Product") == {**ZERO, "applied": 1, "duplicates": 1}


def test_failures_and_dead_letters_are_counted_per_model(settings, private_redis, caplog):
    """Redis refuses the invalidation script (an ACL) but takes the counters."""
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command("ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all",
                          "-evalsha", "-eval")
    settings.CACHES = {**settings.CACHES, "acl": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://app:secret@127.0.0.1:{private_redis.port}/0"}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "acl"}

    with caplog.at_level(logging.DEBUG, logger="cache_invalidation"):
        event = invalidate(tags=["product:1"])

    [letter] = DeadLetter.objects.all()
    assert "NOPERM" in letter.last_error or "no permissions" in letter.last_error
    assert counts("manual") == {**ZERO, "published": 1, "failed": 1, "dead_lettered": 1}
    # Structured logs: every record carries the documented fields.
    records = [r for r in caplog.records if r.name == "cache_invalidation"]
    assert records and all(
        hasattr(r, field) for r in records for field in ("event_ids", "models", "stage",
                                                         "dead_letter"))
    [failed] = [r for r in records if r.levelno == logging.ERROR and r.stage == "apply"]
    assert (failed.event_ids, failed.models, failed.dead_letter) == ([event.id], ["manual"], None)
    [alert] = [r for r in records if r.stage == "dead_letter"]
    assert (alert.event_ids, alert.models, alert.dead_letter) == ([event.id], ["manual"],
                                                                  letter.pk)


def test_lag_percentiles_come_from_real_applies():
    now = time.time()
    fast = [InvalidationEvent(type="manual", tags=(f"fast:{i}",), timestamp=now - 0.150)
            for i in range(90)]
    slow = [InvalidationEvent(type="manual", tags=(f"slow:{i}",), timestamp=now - 7.0)
            for i in range(10)]
    apply_events(fast + slow)

    lag = metrics.snapshot()["lag_ms"]
    assert lag["samples"] == 100
    assert 100 < lag["p50"] <= 200  # 150 ms plus the apply itself, in the (100, 200] bucket
    assert 5000 < lag["p95"] <= 10000 and 5000 < lag["p99"] <= 10000
    assert 700 < lag["mean"] < 900  # (90 * 150 + 10 * 7000) / 100 = 835, plus the apply


def test_percentiles_interpolate_inside_the_bucket_that_holds_the_rank():
    now = 1_764_237_000.0
    events = [InvalidationEvent(type="manual", timestamp=now - 0.008) for _ in range(10)]
    metrics.record_applied(events, now=now)  # ten samples of 8 ms: the (5, 10] bucket
    lag = metrics.snapshot(now=now)["lag_ms"]
    assert (lag["p50"], lag["p95"], lag["p99"]) == (7.5, 9.8, 9.9)  # 5 + 5 * rank/10
    assert metrics.percentile([0] * 15 + [4], 0.5) == 60000.0  # +Inf reports the last bound
    assert metrics.percentile([0] * 16, 0.5) is None


def test_windows_forget_old_buckets():
    now = 1_764_237_000.0
    event = InvalidationEvent(type="manual", timestamp=now)
    metrics.record_applied([event], now=now - 2 * 3600)  # two hours ago
    snapshot = metrics.snapshot(now=now)
    assert snapshot["totals"]["hour"]["applied"] == 0
    assert snapshot["totals"]["day"]["applied"] == 1
    assert metrics.snapshot(now=now + 25 * 3600)["totals"]["day"]["applied"] == 0


@pytest.fixture
def private_cache(settings, private_redis):
    settings.CACHES = {**settings.CACHES, "private": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": private_redis.url}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    return redis.Redis.from_url(private_redis.url)


def _stats(client: redis.Redis) -> tuple[int, dict[str, int]]:
    reads = int(client.info("stats")["total_reads_processed"])
    commands = {name.removeprefix("cmdstat_"): int(v["calls"])
                for name, v in client.info("commandstats").items()}
    return reads, commands


@contextmanager
def round_trips_counted(monkeypatch):
    """The client's round trips while the block runs: "pipeline" or the command's name.

    The real client still sends everything; the server's own read counter is not usable (TCP
    may split one pipeline into several reads)."""
    round_trips: list[str] = []
    original_pipeline, original_command = Pipeline.execute, Redis.execute_command

    def counted_pipeline(self, *args, **kwargs):
        round_trips.append("pipeline")
        return original_pipeline(self, *args, **kwargs)

    def counted_command(self, *args, **kwargs):
        round_trips.append(str(args[0]))
        return original_command(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", counted_pipeline)
    monkeypatch.setattr(Redis, "execute_command", counted_command)
    try:
        yield round_trips
    finally:
        monkeypatch.undo()


def test_recording_a_batch_is_one_pipelined_round_trip(private_cache, monkeypatch):
    committed = time.time()  # one timestamp: every lag falls in the same histogram bucket
    products = [InvalidationEvent(type="shop.Product.updated", entity_type="shop.Product",
                                  timestamp=committed) for _ in range(40)]
    manual = [InvalidationEvent(type="manual", timestamp=committed) for _ in range(10)]
    metrics.record_published([products[0]], "sync")  # opens the cache's connection
    _, before = _stats(private_cache)
    with round_trips_counted(monkeypatch) as round_trips:
        metrics.record_applied(products + manual, now=committed + 0.003)

    _, after = _stats(private_cache)
    assert round_trips == ["pipeline"]
    called = {n: after.get(n, 0) - before.get(n, 0) for n in after}
    # 2 models x applied, 1 lag bucket + its sum; in the minute, hour and total hashes.
    assert called["hincrby"] == (2 + 2) * 3
    assert called["expire"] == 3
    assert {n for n, c in called.items() if c} == {"hincrby", "expire", "info"}


def test_a_committed_sync_save_is_one_round_trip_metrics_included(
    private_cache, product, monkeypatch
):
    product.save()  # warm up: connections, scripts
    _, before = _stats(private_cache)
    with round_trips_counted(monkeypatch) as round_trips:
        product.price = Decimal("3.00")
        product.save()
    _, after = _stats(private_cache)
    # The invalidation script also counted the batch, marked its ids and its model's rate.
    assert round_trips == ["EVALSHA"]
    called = {n: after.get(n, 0) - before.get(n, 0) for n in after}
    # published and applied (1 model) + lag bucket + lag sum, in the 3 hashes, in the script.
    assert called["hincrby"] == 4 * 3
    assert called["expire"] == 3
    assert called["incrby"] == 1  # the model's rate count
    assert counts("shop.Product") == {**ZERO, "published": 2, "applied": 2}


def test_counting_never_breaks_the_work_it_counts(private_cache, private_redis, caplog):
    private_redis.stop()
    with caplog.at_level(logging.DEBUG, logger="cache_invalidation"):
        metrics.record_published([InvalidationEvent(type="manual")], "sync")
        metrics.incr("escalated")
    assert metrics.read() == ZERO
    snapshot = metrics.snapshot()
    assert snapshot["available"] is False and snapshot["error"].startswith("ConnectionError")
    assert snapshot["totals"]["hour"] == ZERO
    [record, *_] = [r for r in caplog.records if "metrics not recorded" in r.getMessage()]
    assert record.levelno == logging.DEBUG and record.stage == "metrics"


def test_other_cache_backends_count_too(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "locmem"}
    invalidate(tags=["home"])
    invalidate(tags=["about"])
    snapshot = metrics.snapshot()
    assert snapshot["per_model"]["manual"]["hour"] == {**ZERO, "published": 2, "applied": 2}
    assert snapshot["lag_ms"]["samples"] == 2
    assert metrics.read()["applied"] == 2


@pytest.mark.celery
def test_counters_move_through_the_celery_worker(settings, celery_worker, product):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    product.price = Decimal("5.00")
    product.save()
    assert counts("shop.Product")["published"] == 1  # counted at publish, in this process
    assert wait_for(lambda: counts("shop.Product")["applied"] == 1)  # ...and by the worker
    assert metrics.snapshot()["lag_ms"]["samples"] == 1
