"""The shared metrics store: counters per model move when writes commit, lag percentiles come
from real applies; counts wait in the process and are written in one pipelined round trip, with
the next script call or on a timer, exactly, in the minute they happened in, across processes."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from decimal import Decimal

import pytest
import redis
from django.db import transaction
from redis.client import Pipeline, Redis

from cache_invalidation import InvalidationEvent, invalidate, metrics, metricstore, no_invalidation
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


def _batch(committed: float) -> list[InvalidationEvent]:
    products = [InvalidationEvent(type="shop.Product.updated", entity_type="shop.Product",
                                  timestamp=committed) for _ in range(40)]
    return products + [InvalidationEvent(type="manual", timestamp=committed) for _ in range(10)]


def test_counts_wait_in_the_process_and_are_written_in_one_pipelined_round_trip(
    private_cache, monkeypatch
):
    committed = time.time()  # one timestamp: every lag falls in the same histogram bucket
    metrics.record_published([_batch(committed)[0]], "sync")
    metrics.flush()  # opens the cache's connection
    _, before = _stats(private_cache)
    with round_trips_counted(monkeypatch) as round_trips:
        metrics.record_applied(_batch(committed), now=committed + 0.003)
        metrics.record_applied(_batch(committed), now=committed + 0.003)
        assert round_trips == []  # counted in the process
        metrics.flush()

    _, after = _stats(private_cache)
    assert round_trips == ["pipeline"]
    called = {n: after.get(n, 0) - before.get(n, 0) for n in after}
    # 2 models x applied, 1 lag bucket + its sum; in the minute, hour and total hashes: both
    # batches in the same increments.
    assert called["hincrby"] == (2 + 2) * 3
    assert called["expire"] == 3
    assert {n for n, c in called.items() if c} == {"hincrby", "expire", "info"}
    assert metrics.read() == {**ZERO, "published": 1, "applied": 100}


def test_with_no_flush_interval_each_batch_is_written_at_once(private_cache, settings,
                                                              monkeypatch):
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "METRICS_FLUSH_INTERVAL": 0}
    committed = time.time()
    metrics.record_published([_batch(committed)[0]], "sync")  # opens the cache's connection
    with round_trips_counted(monkeypatch) as round_trips:
        metrics.record_applied(_batch(committed), now=committed + 0.003)
    assert round_trips == ["pipeline"]
    assert private_cache.hget(_raw_key("ci:stats:total"), "shop.Product|applied") == b"40"


def _raw_key(name: str) -> str:
    from django.core.cache import caches

    return str(caches["private"].client.make_key(name))


def test_a_committed_sync_save_is_one_round_trip(private_cache, settings, product, monkeypatch):
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "METRICS_FLUSH_INTERVAL": 3600}
    product.save()  # warm up: connections, scripts
    _, before = _stats(private_cache)
    with round_trips_counted(monkeypatch) as round_trips:
        product.price = Decimal("3.00")
        product.save()
    _, after = _stats(private_cache)
    # The invalidation script also counted its model's rate; the batch's counts wait in the
    # process, and ids made here are never delivered again: no duplicate mark.
    assert round_trips == ["EVALSHA"]
    called = {n: after.get(n, 0) - before.get(n, 0) for n in after}
    # Versions of its 6 tags (with "pricing:{category_id}": the price changed), no mark.
    assert called.get("hincrby", 0) == 0 and called.get("set", 0) == 6
    assert called["incrby"] == 1  # the model's rate count
    assert counts("shop.Product") == {**ZERO, "published": 2, "applied": 2}  # read flushes


def test_counts_ride_in_the_next_script_call_once_due(private_cache, settings, product,
                                                       monkeypatch):
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "METRICS_FLUSH_INTERVAL": 3600}
    product.save()
    product.save()
    assert private_cache.exists(_raw_key("ci:stats:total")) == 0  # waiting in the process
    monkeypatch.setattr(metricstore, "_oldest", time.monotonic() - 3600)  # an hour later
    _, before = _stats(private_cache)
    with round_trips_counted(monkeypatch) as round_trips:
        product.save()
    _, after = _stats(private_cache)
    assert round_trips == ["EVALSHA"]  # no round trip of their own
    assert after["hincrby"] - before.get("hincrby", 0) == 4 * 3  # written by the script call
    total = private_cache.hgetall(_raw_key("ci:stats:total"))
    assert total[b"shop.Product|applied"] == b"2"  # the two waiting; the third waits now
    assert counts("shop.Product") == {**ZERO, "published": 3, "applied": 3}


def test_counts_are_written_on_a_timer_when_no_script_call_comes(private_cache, settings):
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "METRICS_FLUSH_INTERVAL": 0.2}
    now = time.time()
    metrics.record_applied(_batch(now), now=now)
    metrics.incr("escalated", 3, model="shop.Product")
    key = _raw_key("ci:stats:total")
    assert wait_for(lambda: private_cache.exists(key), timeout=10)
    found = {k.decode(): int(v) for k, v in private_cache.hgetall(key).items()}
    assert found["shop.Product|applied"] == 40 and found["manual|applied"] == 10
    assert found["shop.Product|escalated"] == 3
    minute = {k.decode(): int(v) for k, v in
              private_cache.hgetall(_raw_key(f"ci:stats:min:{int(now // 60)}")).items()}
    assert minute == found  # in the bucket of the minute they happened in


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


CHILD = """
import os, sys, time
import django
django.setup()
from cache_invalidation import InvalidationEvent, metrics
now = float(os.environ["COUNT_AT"])
for _ in range(int(os.environ["BATCHES"])):
    metrics.record_applied([InvalidationEvent(type="manual", timestamp=now)], now=now)
print("counted", flush=True)
if os.environ.get("THEN") == "wait":
    time.sleep(60)
"""


def _child(tmp_path, batches: int, then: str = "exit", interval: str = "3600"):
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_metrics_child",
        "PROCESS_DB": str(tmp_path / "unused.sqlite3"),
        "PROCESS_KEY_PREFIX": django_settings.KEY_PREFIX,
        "CHILD_FLUSH_INTERVAL": interval,
        "COUNT_AT": str(1_764_237_030.0),
        "BATCHES": str(batches),
        "THEN": then,
    }
    return subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def test_counts_of_several_processes_add_up_exactly_in_their_minute(tmp_path):
    """Two processes count in the same minute and exit cleanly (their aggregates are written
    at exit); a third is killed before its interval passed: it loses what it had not
    written, and nothing else."""
    import signal

    killed = _child(tmp_path, 7, then="wait")
    assert killed.stdout.readline().strip() == "counted"
    first, second = _child(tmp_path, 250), _child(tmp_path, 125)
    assert first.wait(60) == 0 and second.wait(60) == 0
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    for child in (killed, first, second):
        child.stdout.close()
    metrics.record_applied([InvalidationEvent(type="manual", timestamp=1_764_237_030.0)],
                           now=1_764_237_030.0)  # this process's own, written when read
    snapshot = metrics.snapshot(now=1_764_237_059.0)  # the same minute
    assert snapshot["per_model"]["manual"]["hour"]["applied"] == 250 + 125 + 1
    assert metrics.snapshot(now=1_764_237_090.0)["totals"]["hour"]["applied"] == 376  # next
    assert metrics.read()["applied"] == 376
    minute = metrics._read_buckets([f"{metrics.PREFIX}min:{1_764_237_030 // 60}"])[0]
    assert minute["manual|applied"] == 376
