"""Worker loss: a worker SIGKILLed in the middle of ``apply_batch`` loses no invalidation.

Real subprocess workers (``tests/worker_app.py``) on a real broker, Redis and RabbitMQ. The
task is ``acks_late``, so a worker that dies before finishing leaves its message unacknowledged
and the broker gives it to the next worker: RabbitMQ as soon as the dead worker's connection
closes, Redis once the message is older than the visibility timeout (2 s here). A message whose
workers keep dying is dead-lettered ("worker_lost") on the delivery after ``MAX_DELIVERIES``
(2 here) instead of killing workers forever.

The workers die at a deterministic point: ``tests.worker_app.SigkillOnApplying`` kills the
process when the task logs "applying" for a batch tagged ``die-once`` (first time only) or
``poison`` (every time), after the delivery was counted and before anything was invalidated.
Each test has its own queue, SQLite file, cache key prefix and broker key prefix, and deletes
them afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from celery import Celery
from django.conf import settings
from kombu import Connection

from cache_invalidation import TaggedCache
from cache_invalidation.events import InvalidationEvent, encode_batch
from tests.conftest import terminate, wait_for
from tests.faults import row

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TIMEOUT = 60  # seconds: the bound on every wait for a worker or the broker

APPLYING = (
    "cache_invalidation: applying 1 event(s) (attempt 1, delivery {n}): tags ['{tag}'], keys []"
)
KILLED = "worker_app: SIGKILL on: " + APPLYING
POISON_ERROR = "delivered 3 times to workers that died before finishing it"
DEAD_LETTERED = (
    "cache_invalidation: dead letter #1 (worker_lost) after 3 attempt(s): " + POISON_ERROR
    + "; tags ['poison'], keys []"
)


class Broker:
    """One test's queue on one broker, a publisher for it, and what is left in it."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.queue = f"citest-wl-{uuid.uuid4().hex[:10]}"
        # kombu's global_keyprefix (Redis only): the queue, the bindings and the unacked index.
        self.prefix = f"{self.queue}:" if kind == "redis" else ""
        self.app = Celery(f"publisher-{self.queue}", broker=url, set_as_current=False)
        self.app.conf.update(
            broker_transport_options={"global_keyprefix": self.prefix} if self.prefix else {},
            broker_connection_timeout=5,
            task_serializer="json",
            accept_content=["json"],
        )

    def publish(self, events: list[InvalidationEvent]) -> str:
        """Send one batch as the celery transport does; returns the task id."""
        result = self.app.send_task(
            "cache_invalidation.apply_batch", args=[encode_batch(events)],
            queue=self.queue, serializer="json",
        )
        return str(result.id)

    def left(self) -> int:
        """Messages the broker still holds for the queue (ready or unacknowledged).

        Call it with no worker running: RabbitMQ has then requeued whatever was unacked."""
        if self.kind == "redis":
            with redis.Redis.from_url(self.url) as client:
                lists = [k for k in client.scan_iter(match=f"{self.prefix}{self.queue}*")
                         if client.type(k) == b"list"]
                return sum(client.llen(k) for k in lists) + client.hlen(f"{self.prefix}unacked")
        with self.app.connection_for_read() as conn:
            channel = conn.default_channel
            assert wait_for(
                lambda: channel.queue_declare(self.queue, passive=True).consumer_count == 0,
                timeout=TIMEOUT, interval=0.1,
            ), "RabbitMQ still sees a consumer on the queue"
            return int(channel.queue_declare(self.queue, passive=True).message_count)

    def delete(self) -> None:
        if self.kind == "redis":
            with redis.Redis.from_url(self.url) as client:
                keys = list(client.scan_iter(match=f"{self.prefix}*"))
                if keys:
                    client.delete(*keys)
        else:
            with self.app.connection_for_write() as conn:
                channel = conn.default_channel
                channel.queue_delete(self.queue)
                channel.exchange_delete(self.queue)
        self.app.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "redis":
        url = settings.CELERY_BROKER_URL  # Redis db 12 unless TEST_BROKER_URL says otherwise
    else:
        url = RABBITMQ_URL
        conn = Connection(url, connect_timeout=3)
        try:
            conn.connect()
        except (OSError, *conn.connection_errors) as exc:
            pytest.skip(f"RabbitMQ is not answering at {conn.as_uri()}: {exc} "
                        "(CI starts it in .ci/run)")
        finally:
            conn.release()
    broker = Broker(request.param, url)
    try:
        yield broker
    finally:
        broker.delete()


class Worker:
    """``celery worker --pool=solo`` in a child process, its output in a file."""

    def __init__(self, number: int, queue: str, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._out: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.worker_app", "worker",
             "--pool=solo", "--concurrency=1", "-Q", queue, "-n", f"{queue}-{number}@%h",
             "--without-gossip", "--without-mingle", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def died(self) -> int:
        """Wait for the worker to exit by itself; its return code."""
        try:
            return self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not die within {TIMEOUT} s; its log:\n{self.log()}")

    def stop(self) -> int:
        """Warm shutdown (SIGTERM), SIGKILL if that takes too long; the return code."""
        if self.process.poll() is None:
            terminate(self.process)
        self._out.close()
        return int(self.process.returncode)


@pytest.fixture(scope="module")
def worker_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file (the dead-letter table), copied for each test."""
    path = tmp_path_factory.mktemp("worker-db") / "template.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_process",
           "PROCESS_DB": str(path), "PROCESS_KEY_PREFIX": "unused"}
    done = subprocess.run([sys.executable, "manage.py", "migrate", "cache_invalidation", "-v0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return path


class Workers:
    """Starts the test's workers, all with the same environment; stops them all at the end."""

    def __init__(self, broker: Broker, tmp_path: Path, db: Path, key_prefix: str) -> None:
        self.broker = broker
        self.tmp_path = tmp_path
        self.db = db
        self.started: list[Worker] = []
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings_worker",
            "PROCESS_DB": str(db),
            "PROCESS_KEY_PREFIX": key_prefix,
            "WORKER_BROKER_URL": broker.url,
            "WORKER_QUEUE": broker.queue,
            "WORKER_BROKER_PREFIX": broker.prefix,
            "WORKER_MARKER_FILE": str(tmp_path / "died-once"),
        }

    def start(self) -> Worker:
        number = len(self.started) + 1
        worker = Worker(number, self.broker.queue, self.env, self.tmp_path / f"w{number}.log")
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            try:
                worker.stop()
            except subprocess.TimeoutExpired:  # even SIGKILL did not end it: try the others
                continue

    def dead_letters(self) -> list[dict[str, Any]]:
        # closing(): sqlite3's own context manager commits but does not close, and Python 3.13
        # reports the unclosed connection with a ResourceWarning (an error in this suite).
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT reason, status, attempts, tags, keys, events, last_error "
                "FROM cache_invalidation_deadletter").fetchall()
        return [dict(row) for row in rows]


class WorkerCache(TaggedCache):
    """The workers' cache (its own key prefix in the shared Redis), seen from this process."""

    def __init__(self, prefix: str) -> None:
        super().__init__("worker")
        self.prefix = prefix

    def raw_key(self, key: str) -> str:
        return f"{self.prefix}:1:{key}"


@pytest.fixture
def worker_cache(settings: Any, redis_client: redis.Redis) -> Iterator[WorkerCache]:
    prefix = f"{settings.KEY_PREFIX}-wl-{uuid.uuid4().hex[:8]}"
    settings.CACHES = {**settings.CACHES, "worker": {
        **settings.CACHES["default"], "KEY_PREFIX": prefix}}
    try:
        yield WorkerCache(prefix)
    finally:
        keys = list(redis_client.scan_iter(match=f"{prefix}*"))
        if keys:
            redis_client.delete(*keys)


@pytest.fixture
def workers(broker: Broker, worker_cache: WorkerCache, worker_db_template: Path,
            tmp_path: Path) -> Iterator[Workers]:
    db = tmp_path / "db.sqlite3"
    shutil.copyfile(worker_db_template, db)
    started = Workers(broker, tmp_path, db, worker_cache.prefix)
    try:
        yield started
    finally:
        started.stop_all()


def deliveries(redis_client: redis.Redis, cache: WorkerCache, task_id: str) -> int:
    """The task's delivery counter (attempt 0) in the workers' cache."""
    value = redis_client.get(cache.raw_key(f"ci:deliveries:{task_id}:0"))
    return int(value) if value is not None else 0


@row("Worker SIGKILLed mid-task (Redis and RabbitMQ brokers)",
     "a subprocess worker kills itself (SIGKILL) after taking the message, before applying it",
     "the unacknowledged message is delivered again and the next worker applies it; nothing "
     "is dead-lettered, nothing is left in the broker")
def test_worker_killed_mid_task_the_next_worker_applies_the_batch(
    broker: Broker, workers: Workers, worker_cache: WorkerCache, redis_client: redis.Redis
) -> None:
    worker_cache.set("page", "cached", tags=["die-once"])
    task_id = broker.publish([InvalidationEvent(type="manual", tags=("die-once",))])

    first = workers.start()
    assert first.died() == -signal.SIGKILL, first.log()
    assert KILLED.format(n=1, tag="die-once") in first.log()
    assert worker_cache.get("page") == "cached"  # the dead worker invalidated nothing

    second = workers.start()  # gets the unacknowledged message again
    assert wait_for(lambda: worker_cache.get("page") is None, timeout=TIMEOUT), second.log()
    assert not redis_client.exists(worker_cache.raw_key("page"))
    succeeded = f"Task cache_invalidation.apply_batch[{task_id}] succeeded in"
    assert wait_for(lambda: succeeded in second.log(), timeout=TIMEOUT), second.log()
    log = second.log()
    assert APPLYING.format(n=2, tag="die-once") in log  # same attempt, second delivery
    assert "delivery 1" not in log and "SIGKILL" not in log
    assert deliveries(redis_client, worker_cache, task_id) == 0  # forgotten once applied
    assert second.process.poll() is None
    assert second.stop() == 0
    assert broker.left() == 0
    assert workers.dead_letters() == []


@row("A poison message that kills every worker",
     "every delivery SIGKILLs its worker (MAX_DELIVERIES = 2)",
     "the third delivery is dead-lettered (worker_lost) and acknowledged; the worker survives; "
     "the batch waits in the DLQ for replay")
def test_poison_message_is_dead_lettered_after_max_deliveries(
    broker: Broker, workers: Workers, worker_cache: WorkerCache, redis_client: redis.Redis
) -> None:
    worker_cache.set("page", "cached", tags=["poison"])
    event = InvalidationEvent(type="manual", tags=("poison",))
    task_id = broker.publish([event])

    for delivery in (1, 2):  # MAX_DELIVERIES = 2 deliveries, each kills its worker
        dying = workers.start()
        assert dying.died() == -signal.SIGKILL, dying.log()
        assert KILLED.format(n=delivery, tag="poison") in dying.log()

    third = workers.start()  # delivery 3 > MAX_DELIVERIES: dead-lettered, not applied
    assert wait_for(workers.dead_letters, timeout=TIMEOUT), third.log()
    succeeded = f"Task cache_invalidation.apply_batch[{task_id}] succeeded in"
    assert wait_for(lambda: succeeded in third.log(), timeout=TIMEOUT), third.log()
    [letter] = workers.dead_letters()
    assert {k: letter[k] for k in ("reason", "status", "attempts", "last_error")} == {
        "reason": "worker_lost", "status": "pending", "attempts": 3, "last_error": POISON_ERROR,
    }
    assert (json.loads(letter["tags"]), json.loads(letter["keys"])) == (["poison"], [])
    assert [e["id"] for e in json.loads(letter["events"])] == [event.id]
    log = third.log()
    assert DEAD_LETTERED in log
    assert "cache_invalidation: applying" not in log and "SIGKILL" not in log
    assert third.process.poll() is None  # the worker survived the poison message
    assert worker_cache.get("page") == "cached"  # never applied: it is in the DLQ to replay
    assert third.stop() == 0
    assert broker.left() == 0  # acknowledged: no fourth delivery
    assert deliveries(redis_client, worker_cache, task_id) == 3
