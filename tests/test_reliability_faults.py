"""Faults: Redis, the broker and the database fail before, during and after an invalidation.

Real services only: private redis-servers the test stops, restarts and flushes, a TCP proxy
(``tests/faults.py``) that makes Redis or PostgreSQL slow or dead at an exact point of the
conversation, real Celery workers (the suite's thread worker, or subprocess workers from
``tests/test_worker_loss.py``) and a Redis broker the test stops or fills up. Every test ends,
after recovery and replay, with every cached entry equal to the database and every published
event accounted for: applied, in the dead-letter queue, or in the outbox. (A worker SIGKILLed
mid-task is covered by ``tests/test_worker_loss.py``.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.db import connection, connections

from cache_invalidation import (
    TaggedCache,
    deadletter,
    dedup,
    invalidate,
    metrics,
    no_invalidation,
    outbox,
)
from cache_invalidation.backends import redis as redis_backend
from cache_invalidation.events import InvalidationEvent
from cache_invalidation.models import DeadLetter, OutboxEvent
from testproject.shop.models import Category, Product
from tests.conftest import PrivateRedis, wait_for
from tests.faults import TcpProxy, row
from tests.test_worker_loss import (  # noqa: F401  (fixtures used by name)
    ROOT,
    TIMEOUT,
    Broker,
    Worker,
    worker_cache,
    worker_db_template,
)

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

INVALIDATE_SCRIPT = re.escape(hashlib.sha1(redis_backend._INVALIDATE.encode()).hexdigest().encode())
# The script goes as EVALSHA <sha> once Redis knows it, as EVAL <source> the first time.
INVALIDATE_CALL = INVALIDATE_SCRIPT + b"|" + re.escape(b"local epoch = KEYS[2 * n + 2]")
DEAD_LETTER_INSERT = rb'INSERT INTO "cache_invalidation_deadletter"'


# -- the shop, its cached pages, and the two end conditions ---------------------------------
@pytest.fixture
def products() -> list[Product]:
    with no_invalidation():
        lamps = Category.objects.create(name="Lamps", slug="lamps")
        return [Product.objects.create(name=f"p{i} v0", price=Decimal("1.00"), category=lamps)
                for i in range(3)]


def page_key(pk: int) -> str:
    return f"product:{pk}:name"


def view(cache: TaggedCache, pk: int) -> str:
    """What a product page shows: the name, read through the cache."""
    return cache.get_or_set(page_key(pk), lambda: Product.objects.get(pk=pk).name,
                            tags=[f"product:{pk}"])


def warm(cache: TaggedCache, products: list[Product]) -> None:
    for product in products:
        assert view(cache, product.pk) == Product.objects.get(pk=product.pk).name
        assert cache.get(page_key(product.pk)) is not None


def rename(product: Product, name: str) -> None:
    product.name = name
    product.save()


def assert_cache_equals_database(cache: TaggedCache, products: list[Product]) -> None:
    for product in products:
        stored = Product.objects.get(pk=product.pk).name
        assert cache.get(page_key(product.pk)) in (None, stored), product.pk
        assert view(cache, product.pk) == stored


def assert_accounted(published: list[str], applied: set[str]) -> None:
    """Every published event id is applied, in the dead-letter queue, or in the outbox."""
    lettered = {i for letter in DeadLetter.objects.all() for i in letter.event_ids}
    boxed = {row.event.get("id") for row in OutboxEvent.objects.all()}
    missing = [i for i in published if i not in applied | lettered | boxed]
    assert published and missing == []


def replay_all() -> deadletter.ReplayResult:
    return deadletter.replay(deadletter.pending().values_list("pk", flat=True))


def wipe(server: PrivateRedis) -> None:
    """Restart ``server`` empty: stop it, delete its append-only file, start it."""
    server.stop()
    for name in ("appendonlydir", "dump.rdb"):
        path = server.workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    server.start()


def cache_settings(location: str, timeout: float = 0.5) -> dict[str, Any]:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout},
    }


@pytest.fixture
def proxy(private_redis: PrivateRedis) -> Iterator[TcpProxy]:
    front = TcpProxy(private_redis.port)
    yield front
    front.close()


@pytest.fixture
def celery_faults(settings: Any, celery_worker: Any, private_redis: PrivateRedis,
                  proxy: TcpProxy) -> Any:
    """The celery transport and the suite's worker thread; the cache is a private Redis,
    reached directly (alias ``private``) or through the proxy (alias ``proxied``)."""
    settings.CACHES = {**settings.CACHES, "private": cache_settings(private_redis.url),
                       "proxied": cache_settings(proxy.url)}
    settings.CACHE_INVALIDATION = {
        "TRANSPORT": "celery", "CACHE_ALIAS": "proxied", "MAX_RETRIES": 5,
        "RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 0.4, "RETRY_JITTER": False,
    }
    return settings


def applied_ids(recorder: Any) -> set[str]:
    return {e.id for kwargs in recorder.applied for e in kwargs["events"]}


def emitted_ids(recorder: Any) -> list[str]:
    """Every event that left the request: published, or failed to publish."""
    ids = [e.id for e in recorder.events]
    failed = [e.id for f in recorder.failed if f["stage"] == "publish" for e in f["events"]]
    return list(dict.fromkeys(ids + failed))


# -- Redis down before, during and after the task ------------------------------------------
@row("Redis down before the task (celery)",
     "the private redis-server is stopped before the write commits; started again while "
     "the task retries",
     "the task retries with backoff and applies once Redis is back; no dead letter")
def test_redis_down_before_the_task(celery_faults, private_redis, products, recorder):
    cache = TaggedCache("private")
    celery_faults.CACHE_INVALIDATION = {**celery_faults.CACHE_INVALIDATION,
                                        "CACHE_ALIAS": "private"}
    warm(cache, products)
    private_redis.stop()
    rename(products[0], "p0 v1")
    assert wait_for(lambda: any(f["will_retry"] for f in recorder.failed), timeout=20)
    private_redis.start()  # same port, data kept in its append-only file
    [event] = recorder.events
    assert wait_for(lambda: event.id in applied_ids(recorder), timeout=30)
    assert_cache_equals_database(cache, products)
    assert_accounted([event.id], applied_ids(recorder))
    assert not DeadLetter.objects.exists()


@row("Redis slower than SOCKET_TIMEOUT during the task",
     "a TCP proxy forwards the invalidation script to Redis, then holds the reply past the "
     "0.5 s socket timeout",
     "Redis ran the script (the invalidation and, in the same call, the event's duplicate mark "
     "and counters) but the task saw a timeout: it retries, finds the event applied and skips "
     "it as a duplicate; entries equal the database; no dead letter")
def test_redis_reply_lost_during_the_task(celery_faults, proxy, products, recorder):
    cache = TaggedCache("private")
    warm(cache, products)
    TaggedCache("proxied").invalidate_tags(["warm-up"])  # Redis knows the script: EVALSHA runs
    proxy.on_match(INVALIDATE_CALL, then="stall", forward=True)
    rename(products[1], "p1 v1")
    assert proxy.triggered.wait(20)
    assert wait_for(lambda: any(f["will_retry"] for f in recorder.failed), timeout=20)
    assert "Timeout" in type(recorder.failed[0]["error"]).__name__
    assert cache.get(page_key(products[1].pk)) is None  # Redis did run it
    proxy.up()
    [event] = recorder.events
    assert wait_for(lambda: metrics.read()["duplicates"] == 1, timeout=30)  # the retry skipped it
    assert metrics.read()["applied"] == 1  # counted once, by the script that applied it
    assert_cache_equals_database(cache, products)
    assert_accounted([event.id], applied_ids(recorder) | dedup.applied([event.id]))
    assert not DeadLetter.objects.exists()


@row("Redis dies right after running the invalidation script, before its reply, then "
     "restarts from its append-only file",
     "the proxy forwards the invalidation script, then drops every connection; the "
     "redis-server is restarted while the task retries",
     "the invalidation stands, with the event's duplicate mark written by the same script: the "
     "retry skips the event as applied; after the restart entries equal the database; no dead "
     "letter")
def test_redis_dies_after_the_invalidation(celery_faults, proxy, private_redis, products,
                                           recorder):
    # Retries fail fast while the proxy is down: leave room for the restart.
    celery_faults.CACHE_INVALIDATION = {**celery_faults.CACHE_INVALIDATION, "MAX_RETRIES": 40}
    cache = TaggedCache("private")
    warm(cache, products)
    TaggedCache("proxied").invalidate_tags(["warm-up"])  # Redis knows the script: EVALSHA runs
    proxy.on_match(INVALIDATE_CALL, then="down", forward=True)
    rename(products[2], "p2 v1")
    assert proxy.triggered.wait(20)
    assert wait_for(lambda: any(f["will_retry"] for f in recorder.failed), timeout=20)
    private_redis.stop()
    private_redis.start()
    proxy.up()
    [event] = recorder.events
    assert wait_for(lambda: metrics.read()["duplicates"] == 1, timeout=30)
    assert_cache_equals_database(cache, products)
    assert_accounted([event.id], applied_ids(recorder) | dedup.applied([event.id]))
    assert not DeadLetter.objects.exists()


# -- a batch too large for one script call -------------------------------------------------
@pytest.fixture
def split_caches(settings: Any, private_redis: PrivateRedis, proxy: TcpProxy) -> Any:
    """``private`` reaches the private Redis directly, ``proxied`` through the proxy; a timeout
    long enough for a held call."""
    settings.CACHES = {**settings.CACHES, "private": cache_settings(private_redis.url, 5),
                       "proxied": cache_settings(proxy.url, 5)}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "proxied"}
    return settings


def many_tags(n: int) -> list[str]:
    return [f"t-{i:04d}" for i in range(n)]


@row("A store lands between two script calls of a large invalidation",
     "600 tags are applied in three calls of 250; a TCP proxy holds the second call while a "
     "request whose lookup predates the invalidation stores a value under a tag of that call",
     "the store succeeds (its tag is not stamped yet) and is deleted by the held call once it "
     "runs: once the invalidation returns, nothing stale is served")
def test_a_store_between_two_calls_is_dropped_by_the_later_call(split_caches, proxy):
    assert redis_backend.TAGS_PER_CALL == 250
    direct, via = TaggedCache("private"), TaggedCache("proxied")
    tags = many_tags(600)
    via.invalidate_tags(["warm-up"])  # Redis knows the script: the held call is EVALSHA
    before = direct.backend.lookup("page", None, 5, False)  # a request starts computing
    proxy.on_match(re.escape(b"ci:v:t-0499"), then="hold", forward=False)  # the 2nd call
    worker = threading.Thread(target=via.invalidate_tags, args=(tags,))
    worker.start()
    assert proxy.triggered.wait(10)  # the first call ran; the second waits
    assert direct.backend.store("page", "stale", [tags[300]], 60, since=before.since)
    proxy.up()
    worker.join(10)
    assert not worker.is_alive()
    assert direct.get("page") is None
    # And a store after the call that stamped its tag is refused.
    assert not direct.backend.store("page", "stale", [tags[300]], 60, since=before.since)


@row("Redis lost in the middle of a large invalidation (sync)",
     "600 tags in three script calls; the proxy drops the connection when the third call is "
     "sent; the proxy comes back and the dead letter is replayed",
     "the first two calls stand; the dead letter holds exactly the third call's tags (and the "
     "event is not marked applied); the replay drops the rest")
def test_a_large_invalidation_cut_part_way_is_finished_by_its_dead_letter(split_caches, proxy):
    direct = TaggedCache("private")
    tags = many_tags(600)
    for tag in (tags[0], tags[300], tags[599]):
        direct.set(f"page-{tag}", "v", tags=[tag])
    TaggedCache("proxied").invalidate_tags(["warm-up"])
    proxy.on_match(re.escape(b"ci:t:t-0500"), then="down", forward=False)
    event = invalidate(tags=tags)
    assert proxy.triggered.is_set()
    assert direct.get(f"page-{tags[0]}") is None and direct.get(f"page-{tags[300]}") is None
    assert direct.get(f"page-{tags[599]}") == "v"  # its call never reached Redis
    [letter] = DeadLetter.objects.all()
    assert (letter.tags, letter.keys, letter.event_ids) == (tags[500:], [], [event.id])
    assert not dedup.applied([event.id])
    proxy.up()
    assert replay_all().replayed == [letter.pk]
    assert direct.get(f"page-{tags[599]}") is None


@row("Redis lost in the middle of replaying a large dead letter",
     "a dead letter of 600 tags is replayed while the proxy drops the connection at its third "
     "script call",
     "the row stays pending and keeps only what is left (the third call's tags): nothing the "
     "first calls renamed for draining or left undone is forgotten; the next replay finishes")
def test_a_replay_cut_part_way_keeps_only_what_is_left(split_caches, proxy):
    direct = TaggedCache("private")
    tags = many_tags(600)
    direct.set("page", "v", tags=[tags[599]])
    event = InvalidationEvent(type="manual", tags=tuple(tags))
    letter = deadletter.record([event], DeadLetter.Reason.APPLY_FAILED, "test", tags=tags)
    TaggedCache("proxied").invalidate_tags(["warm-up"])
    proxy.on_match(re.escape(b"ci:t:t-0500"), then="down", forward=False)
    assert replay_all().failed
    letter.refresh_from_db()
    assert (letter.status, letter.tags, letter.drains) == ("pending", tags[500:], [])
    assert direct.get("page") == "v"
    proxy.up()
    assert replay_all().replayed == [letter.pk]
    assert direct.get("page") is None


@row("A large tag's drain is orphaned: the reply of the script that renamed its member set "
     "is lost",
     "300 entries under one tag (over the 200 deleted inline); the proxy forwards the "
     "invalidation script and holds its reply past the socket timeout, so the caller never "
     "learns the name of the set to drain",
     "the invalidation raises (nothing reported done); the renamed set is in the registry of "
     "draining sets, and the next invalidation past the orphan age claims and drains it: "
     "no entry of the tag stays cached")
def test_an_orphaned_drain_is_finished_by_a_later_invalidation(split_caches, proxy,
                                                               monkeypatch):
    split_caches.CACHES = {**split_caches.CACHES,
                           "proxied": cache_settings(proxy.url, 0.5)}
    direct, via = TaggedCache("private"), TaggedCache("proxied")
    for i in range(300):
        direct.set(f"page-{i}", "v", tags=["big"])
    via.invalidate_tags(["warm-up"])  # Redis knows the script: EVALSHA runs
    proxy.on_match(INVALIDATE_CALL, then="stall", forward=True)
    with pytest.raises(redis.exceptions.TimeoutError):
        via.invalidate_tags(["big"])
    proxy.up()
    cached = sum(direct.get(f"page-{i}") == "v" for i in range(300))
    assert cached == 300  # renamed for draining, never drained: the hole this closes
    direct.invalidate_tags(["unrelated"])  # too soon: the drainer may still be at work
    assert direct.get("page-0") == "v"
    monkeypatch.setattr(redis_backend, "ORPHANED_AFTER_MS", 0)
    direct.invalidate_tags(["unrelated"])
    assert sum(direct.get(f"page-{i}") is not None for i in range(300)) == 0


# -- Redis restarted empty --------------------------------------------------------------------
@pytest.fixture
def sync_private(settings: Any, private_redis: PrivateRedis) -> TaggedCache:
    settings.CACHES = {**settings.CACHES, "private": cache_settings(private_redis.url)}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    return TaggedCache("private")


def slow_view(cache: TaggedCache, pk: int, read: threading.Event, go: threading.Event
              ) -> tuple[threading.Thread, dict[str, Any]]:
    """A request that reads the row, then waits for ``go`` before its value is stored."""
    result: dict[str, Any] = {}

    def compute() -> str:
        name = Product.objects.get(pk=pk).name
        read.set()
        assert go.wait(10)
        return name

    def body() -> None:
        try:
            result["value"] = cache.get_or_set(page_key(pk), compute, tags=[f"product:{pk}"])
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread, result


@pytest.mark.parametrize("order", ["flush-then-write", "write-then-flush"])
@row("Redis restarted empty (flushed) while a request computes a page",
     "a request reads the old row; the private redis-server is restarted without its data "
     "and the write commits (before or after the restart); then the request stores",
     "the store is refused (the sequence restarts from the server clock and the lost "
     "sequence is detected): the old value is served once, never cached")
def test_redis_flushed_while_a_request_computes(sync_private, private_redis, products, order,
                                                recorder):
    cache = sync_private
    product = products[0]
    read, go = threading.Event(), threading.Event()
    cache.invalidate_tags(["warm-up"])  # the sequence is running before the request starts
    thread, result = slow_view(cache, product.pk, read, go)
    assert read.wait(10)
    if order == "flush-then-write":
        wipe(private_redis)
        rename(product, "p0 v1")
    else:
        rename(product, "p0 v1")
        wipe(private_redis)
    go.set()
    thread.join(10)
    assert result == {"value": "p0 v0"}  # what it computed, served to that request only
    assert cache.get(page_key(product.pk)) is None
    assert_cache_equals_database(cache, products)
    assert_accounted([e.id for e in recorder.events], applied_ids(recorder))


# -- the broker -------------------------------------------------------------------------------
@contextmanager
def publishing_to(url: str, celery_app: Any, **conf: Any) -> Iterator[Celery]:
    """Make ``url`` the broker the celery transport publishes to (the current app)."""
    app = Celery(f"publisher-{uuid.uuid4().hex[:6]}", broker=url, set_as_current=False)
    app.conf.update(broker_connection_timeout=1, task_serializer="json",
                    accept_content=["json"], **conf)
    app.set_current()
    try:
        yield app
    finally:
        celery_app.set_current()
        app.close()


@row("Broker down at publish",
     "the celery transport publishes to a private redis-server that is stopped",
     "the request succeeds; the batch is a dead letter (publish_failed); once the broker is "
     "back, replay applies it and entries equal the database")
def test_broker_down_at_publish(settings, celery_app, tmp_path, sync_private, products,
                                recorder):
    cache = sync_private
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "CACHE_ALIAS": "private"}
    broker = PrivateRedis(tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    warm(cache, products)
    with publishing_to(broker.url, celery_app):  # never started: connection refused
        rename(products[0], "p0 v1")
    [failure] = recorder.failed
    assert failure["stage"] == "publish"
    [letter] = DeadLetter.objects.all()
    assert (letter.reason, letter.tags[:1]) == ("publish_failed", [f"product:{products[0].pk}"])
    assert cache.get(page_key(products[0].pk)) == "p0 v0"  # stale until replayed
    broker.start()
    try:
        assert replay_all().replayed == [letter.pk]
    finally:
        broker.stop()
    assert_cache_equals_database(cache, products)
    assert_accounted(emitted_ids(recorder), applied_ids(recorder))


def worker_env(tmp_path: Path, queue: str, broker_url: str, key_prefix: str, *,
               db: Path | None = None, database_url: str | None = None,
               redis_url: str | None = None, max_retries: int | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_worker",
        "PROCESS_DB": str(db or tmp_path / "unused.sqlite3"),
        "PROCESS_KEY_PREFIX": key_prefix,
        "WORKER_BROKER_URL": broker_url,
        "WORKER_QUEUE": queue,
        "WORKER_BROKER_PREFIX": "",
        "WORKER_MARKER_FILE": str(tmp_path / "unused-marker"),
    }
    if database_url:
        env["PROCESS_DATABASE_URL"] = database_url
    if redis_url:
        env["TEST_REDIS_URL"] = redis_url
    if max_retries is not None:
        env["WORKER_MAX_RETRIES"] = str(max_retries)
    return env


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    try:
        yield worker
    finally:
        worker.stop()


def sqlite_dead_letters(db: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT reason, status, tags, events, last_error "
                            "FROM cache_invalidation_deadletter").fetchall()
    return [dict(r) for r in rows]


@pytest.fixture
def worker_db(worker_db_template: Path, tmp_path: Path) -> Path:  # noqa: F811
    db = tmp_path / "worker.sqlite3"
    shutil.copyfile(worker_db_template, db)
    return db


@row("Broker restarted while the worker runs",
     "a subprocess worker consumes from a private redis-server broker, which is stopped, "
     "written to (publish fails), and started again from its append-only file",
     "what was published before and after the restart is applied by the same worker once "
     "it reconnects; the batch published during the outage is a dead letter, replayed; "
     "entries equal the database")
def test_broker_restarted_while_the_worker_runs(settings, celery_app, tmp_path, worker_cache,  # noqa: F811
                                                worker_db, products, recorder):
    broker = PrivateRedis(tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    broker.start()
    queue = f"citest-rel-{uuid.uuid4().hex[:8]}"
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "CACHE_ALIAS": "worker",
                                   "CELERY_QUEUE": queue}
    env = worker_env(tmp_path, queue, broker.url, worker_cache.prefix, db=worker_db)
    warm(worker_cache, products)
    try:
        with running(Worker(1, queue, env, tmp_path / "w1.log")) as worker, \
                publishing_to(broker.url, celery_app):
            rename(products[0], "p0 v1")  # before the restart
            assert wait_for(lambda: worker_cache.get(page_key(products[0].pk)) is None,
                            timeout=TIMEOUT), worker.log()
            broker.stop()
            rename(products[1], "p1 v1")  # during the outage: publishing fails
            broker.start()
            rename(products[2], "p2 v1")  # after: waits in the queue for the reconnect
            assert wait_for(lambda: worker_cache.get(page_key(products[2].pk)) is None,
                            timeout=TIMEOUT), worker.log()
            # The entry is gone inside the task; its "succeeded" line is logged just after.
            assert wait_for(lambda: worker.log().count("succeeded in") == 2,
                            timeout=TIMEOUT), worker.log()
            assert worker.process.poll() is None  # the same worker, reconnected
        [letter] = DeadLetter.objects.all()
        assert letter.reason == "publish_failed"
        assert letter.tags[:1] == [f"product:{products[1].pk}"]
        assert sqlite_dead_letters(worker_db) == []
        assert replay_all().replayed == [letter.pk]
    finally:
        broker.stop()
    assert_cache_equals_database(worker_cache, products)
    assert worker.log().count("succeeded in") == 2  # the two batches the broker took
    published = [e.id for e in recorder.events]
    assert len(published) == 2
    assert_accounted(emitted_ids(recorder), set(published))


@row("Broker refuses the retry (out of memory) while the cache is down",
     "a subprocess worker's cache is held stalled by the proxy; while the task waits, the "
     "private broker is set to maxmemory 1, so publishing the retry fails",
     "the events are dead-lettered (publish_failed) instead of dropped with the message "
     "(Celery rejects it); replay applies them once both are back")
def test_broker_refuses_the_retry(tmp_path, worker_db, products, settings, redis_client):
    cache_server = PrivateRedis(tmp_path / "cache")
    broker = PrivateRedis(tmp_path / "broker")
    for server in (cache_server, broker):
        server.workdir.mkdir()
        server.start()
    front = TcpProxy(cache_server.port)
    prefix = f"citest-rel-{uuid.uuid4().hex[:8]}"
    settings.CACHES = {**settings.CACHES, "direct": {
        **cache_settings(cache_server.url, 2), "KEY_PREFIX": prefix}}
    cache = TaggedCache("direct")
    warm(cache, products)
    queue = f"citest-rel-{uuid.uuid4().hex[:8]}"
    env = worker_env(tmp_path, queue, broker.url, prefix, db=worker_db, redis_url=front.url,
                     max_retries=3)
    env["WORKER_SOCKET_TIMEOUT"] = "1"
    # The acknowledgement follows the dead letter, and an out-of-memory broker refuses it too
    # (kombu then restores the message): the counts written to the stalled cache between the
    # two (1 s each) are what gives this test the time to lift maxmemory in between.
    env["WORKER_METRICS_FLUSH_INTERVAL"] = "0"
    publisher = QueuePublisher(broker.url, queue)
    admin = redis.Redis(port=broker.port)
    try:
        with no_invalidation():  # the change the event is about
            Product.objects.filter(pk=products[0].pk).update(name="p0 v1")
        front.stall()  # the worker's cache answers nothing: every call times out (2 s)
        with running(Worker(1, queue, env, tmp_path / "w1.log")) as worker:
            event = _event(products[0])
            publisher.publish([event])
            assert wait_for(lambda: "cache_invalidation: applying" in worker.log(),
                            timeout=TIMEOUT), worker.log()
            admin.config_set("maxmemory", "1")  # the retry cannot be published
            assert wait_for(lambda: sqlite_dead_letters(worker_db), timeout=TIMEOUT), \
                worker.log()
            admin.config_set("maxmemory", "0")
            assert worker.process.poll() is None
        [letter] = sqlite_dead_letters(worker_db)
        assert letter["reason"] == "publish_failed"
        assert "the retry could not be published" in letter["last_error"]
        assert "maxmemory" in letter["last_error"]
        assert event.id in letter["events"]
        assert publisher.left() == 0  # acknowledged: recorded in the DLQ, not redelivered
        assert cache.get(page_key(products[0].pk)) == "p0 v0"  # stale until replayed
        front.up()
        replayed = _manage(env, "replay_dead_letters", "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert_cache_equals_database(cache, products)
    finally:
        front.close()
        publisher.app.close()
        broker.stop()
        cache_server.stop()


class QueuePublisher:
    """Sends batches to one queue of a private Redis broker, as the celery transport does."""

    def __init__(self, url: str, queue: str) -> None:
        self.url, self.queue = url, queue
        self.app = Celery(f"publisher-{queue}", broker=url, set_as_current=False)
        self.app.conf.update(broker_connection_timeout=5, task_serializer="json",
                             accept_content=["json"])

    def publish(self, events: list[Any]) -> str:
        from cache_invalidation.events import encode_batch

        return str(self.app.send_task("cache_invalidation.apply_batch",
                                      args=[encode_batch(events)], queue=self.queue,
                                      serializer="json").id)

    def left(self) -> int:
        """Messages still in the queue or unacknowledged."""
        with redis.Redis.from_url(self.url) as client:
            return int(client.llen(self.queue)) + int(client.hlen("unacked"))


def _event(product: Product) -> Any:
    from cache_invalidation import InvalidationEvent

    return InvalidationEvent(type="shop.Product.updated", entity_type="shop.Product",
                             entity_id=str(product.pk), tags=(f"product:{product.pk}",))


def _manage(env: dict[str, str], *args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# -- the database -----------------------------------------------------------------------------
postgresql_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'",
    reason="a real database outage needs a server to cut off (SQLite is a file)",
)


def database_url_via(proxy: TcpProxy) -> str:
    params = connection.settings_dict
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    return (f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{params['NAME']}"
            "?sslmode=disable")


@pytest.fixture
def database_proxy() -> Iterator[TcpProxy]:
    front = TcpProxy(int(connection.settings_dict.get("PORT") or 5432))
    yield front
    front.close()


@postgresql_only
@row("Database down when the worker must write a dead letter (PostgreSQL)",
     "a subprocess worker reaches PostgreSQL through the proxy, which cuts it off when the "
     "worker sends INSERT INTO cache_invalidation_deadletter; the cache is down too",
     "the message is not acknowledged away: the task is retried until the database is back, "
     "then the dead letter is written, and replay applies it")
def test_database_down_when_the_worker_dead_letters(tmp_path, settings, products,
                                                    database_proxy, private_redis):
    prefix = f"citest-rel-{uuid.uuid4().hex[:8]}"
    settings.CACHES = {**settings.CACHES, "private": {
        **cache_settings(private_redis.url), "KEY_PREFIX": prefix}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    cache = TaggedCache("private")
    warm(cache, products)
    private_redis.stop()
    broker = Broker("redis", settings.CELERY_BROKER_URL)
    env = worker_env(tmp_path, broker.queue, broker.url, prefix,
                     database_url=database_url_via(database_proxy),
                     redis_url=private_redis.url, max_retries=0)
    env["WORKER_BROKER_PREFIX"] = broker.prefix
    database_proxy.on_match(DEAD_LETTER_INSERT, then="down", forward=False)
    try:
        with running(Worker(1, broker.queue, env, tmp_path / "w1.log")) as worker:
            with no_invalidation():
                Product.objects.filter(pk=products[0].pk).update(name="p0 v1")
            event = _event(products[0])
            broker.publish([event])
            assert database_proxy.triggered.wait(TIMEOUT), worker.log()
            assert wait_for(lambda: worker.log().count("could not write a dead letter") >= 2,
                            timeout=TIMEOUT), worker.log()
            assert not DeadLetter.objects.exists()  # nowhere yet but the broker and the log
            database_proxy.up()
            assert wait_for(DeadLetter.objects.exists, timeout=TIMEOUT), worker.log()
        [letter] = DeadLetter.objects.all()
        assert (letter.reason, letter.event_ids) == ("retries_exhausted", [event.id])
        assert broker.left() == 0
        private_redis.start()
        assert replay_all().replayed == [letter.pk]
        assert_cache_equals_database(cache, products)
    finally:
        broker.delete()


@contextmanager
def connection_through(proxy: TcpProxy) -> Iterator[None]:
    """In this thread only, reach the database through ``proxy``."""
    original = connections["default"]
    params = {**original.settings_dict, "HOST": "127.0.0.1", "PORT": proxy.port,
              "OPTIONS": {**original.settings_dict.get("OPTIONS", {}), "sslmode": "disable"}}
    proxied = type(original)(params, "default")
    connections["default"] = proxied
    try:
        yield
    finally:
        proxied.close()
        connections["default"] = original


def in_thread(target: Callable[[], Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(60)
    return result


@postgresql_only
@row("Database down when the outbox relay must write a dead letter (PostgreSQL)",
     "the relay's connection goes through the proxy, which cuts it off at INSERT INTO "
     "cache_invalidation_deadletter; the cache is down and MAX_RETRIES is 0",
     "the relay fails as a whole and the outbox rows stay; the next relay writes the dead "
     "letter, replay applies it")
def test_database_down_when_the_outbox_relay_dead_letters(settings, sync_private,
                                                          private_redis, database_proxy,
                                                          products):
    cache = sync_private
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox", "CACHE_ALIAS": "private",
                                   "OUTBOX_DELIVER_ON_COMMIT": False, "MAX_RETRIES": 0}
    warm(cache, products)
    rename(products[0], "p0 v1")
    [boxed] = OutboxEvent.objects.all()
    private_redis.stop()
    database_proxy.on_match(DEAD_LETTER_INSERT, then="down", forward=False)

    def relay() -> Any:
        with connection_through(database_proxy):
            return outbox.relay()

    failed = in_thread(relay)
    assert database_proxy.triggered.is_set()
    assert "error" in failed  # the relay's transaction failed as a whole
    assert list(OutboxEvent.objects.values_list("pk", flat=True)) == [boxed.pk]
    assert not DeadLetter.objects.exists()
    database_proxy.up()
    assert in_thread(relay)["value"].dead_lettered == 1
    assert not OutboxEvent.objects.exists()
    [letter] = DeadLetter.objects.all()
    assert letter.event_ids == [boxed.event["id"]]
    private_redis.start()
    assert replay_all().replayed == [letter.pk]
    assert_cache_equals_database(cache, products)


@postgresql_only
@row("Database down when the sync transport must write a dead letter (PostgreSQL)",
     "the request's connection goes through the proxy, cut off at INSERT INTO "
     "cache_invalidation_deadletter, while the cache is down",
     "documented limit of sync (no durable store left): the events are in a CRITICAL log "
     "record; replaying them by hand with invalidate() restores entries equal to the "
     "database")
def test_database_down_when_sync_dead_letters(settings, sync_private, private_redis,
                                              database_proxy, products, caplog):
    cache = sync_private
    warm(cache, products)
    rename_later = products[0]
    with no_invalidation():
        Product.objects.filter(pk=rename_later.pk).update(name="p0 v1")
    private_redis.stop()
    database_proxy.on_match(DEAD_LETTER_INSERT, then="down", forward=False)

    def request() -> Any:
        with connection_through(database_proxy):
            return invalidate(tags=[f"product:{rename_later.pk}"])

    with caplog.at_level(logging.CRITICAL, logger="cache_invalidation"):
        done = in_thread(request)
    event = done["value"]  # the request itself succeeded
    [record] = [r for r in caplog.records if "could not write a dead letter" in r.getMessage()]
    assert record.levelno == logging.CRITICAL
    assert event.id in record.getMessage() and f"product:{rename_later.pk}" in record.getMessage()
    assert not DeadLetter.objects.exists()
    database_proxy.up()
    private_redis.start()
    invalidate(tags=list(event.tags))  # the operator replays the logged event by hand
    assert_cache_equals_database(cache, products)
