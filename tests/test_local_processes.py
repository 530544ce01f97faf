"""The local cache (L1) across real processes: gunicorn workers, a writer elsewhere, forks.

The demo shop is served by gunicorn (``testproject.wsgi``, settings ``tests.settings_local``:
the demo's own ``LOCAL_CACHE`` with ``DEFAULT`` on, so its pages say ``X-Cache: hit-local``
when a worker answers from its own memory). Its rows live in an SQLite file (SQLite half) or
in the PostgreSQL test database (PostgreSQL half); a writer subprocess changes prices through
the ORM with the ``sync`` transport and answers once the change committed and its invalidation
was applied, with the invalidation sequence number then.

**What counts as stale.** Every response carries ``X-Local-Mark``: the number of the last
announcement the worker's local cache had applied when the request began. A page showing the
old price after the write is a violation when that number already covers the write's
invalidation, or when the worker bypassed its local cache (its reads then go to Redis, which
was invalidated before the writer answered). An old page under a smaller number is the one
window the design leaves (an announcement on its way to a subscriber, see
:mod:`cache_invalidation.localcache`); it must close: every worker must then serve the new
price, and from its local copy again. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from django.conf import settings

from tests.conftest import PrivateRedis, terminate, wait_for

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds: the bound on every wait for a process
PRICE = re.compile(r"<strong>\$([0-9.]+)</strong>")

# transaction=True: on PostgreSQL the test database is real and shared with the children (its
# rows are flushed afterwards); on SQLite the children use a file of their own.
pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Page:
    pid: int
    cache: str
    mark: str  # "bypass" or the announcement number
    price: str

    def stale_after(self, old: str, seq: int) -> bool:
        """An old price although the worker had applied the write's announcement (or read
        Redis, which was invalidated before the write was reported done)."""
        return self.price == old and (self.mark == "bypass" or int(self.mark) >= seq)


class Environment:
    """What every process of one test shares: Redis, key prefix, database."""

    def __init__(self, tmp_path: Path, redis_url: str, database_url: str | None) -> None:
        self.redis_url = redis_url
        self.key_prefix = f"citest-local-{uuid.uuid4().hex[:10]}"
        self.env = {
            k: v for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "LOCAL_DATABASE_URL")
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="tests.settings_local",
            REDIS_URL=redis_url,
            LOCAL_KEY_PREFIX=self.key_prefix,
            LOCAL_DB=str(tmp_path / "shop.sqlite3"),
            PYTHONUNBUFFERED="1",
        )
        if database_url:
            self.env["LOCAL_DATABASE_URL"] = database_url
        else:
            migrated = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
                cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
            )
            assert migrated.returncode == 0, migrated.stderr

    def delete_keys(self) -> None:
        with redis.Redis.from_url(self.redis_url) as client:
            keys = list(client.scan_iter(match=f"{self.key_prefix}*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture
def database_url(transactional_db: None) -> str | None:
    """The PostgreSQL test database on the PostgreSQL half, None on the SQLite half (each
    test migrates a file of its own)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    params = connection.settings_dict
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    return (f"postgres://{params.get('USER') or 'postgres'}{password}@"
            f"{params.get('HOST') or '127.0.0.1'}:{params.get('PORT') or 5432}/{params['NAME']}")


class Writer:
    """``python -m tests.local_support writer``: one command a line, one answer a line."""

    def __init__(self, environment: Environment, log: Path) -> None:
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.local_support", "writer"], cwd=ROOT,
            env=environment.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True,
        )

    def send(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the writer died: {Path(self._log.name).read_text()}"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, answer
        return answer

    def price(self, pk: int, price: str) -> int:
        """Set the price; returns the invalidation sequence once it was applied."""
        return int(self.send(op="price", pk=pk, price=price)["seq"])

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT)
        self.process.stdout.close()
        self._log.close()


class Shop:
    """gunicorn serving the demo shop on a free loopback port."""

    def __init__(self, environment: Environment, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.log_path = log
        out: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "testproject.wsgi:application",
             "--bind", f"127.0.0.1:{self.port}", "--timeout", "60", "--graceful-timeout", "5",
             "--log-level", "warning", *args],
            cwd=ROOT, env=environment.env, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def workers(self) -> set[int]:
        """The worker processes (the master's children)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(p) for p in path.read_text().split()}

    def wait_serving(self, path: str, workers: int) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log()
            if len(self.workers()) != workers:
                return False
            try:
                return self.get(path).price != ""
            except OSError:
                return False

        assert wait_for(ready, timeout=TIMEOUT, interval=0.2), self.log()

    def get(self, path: str) -> Page:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            body = r.read().decode()
            found = PRICE.search(body)
            assert found, body[:2000]
            return Page(int(r.headers["X-Served-By"]), r.headers["X-Cache"],
                        r.headers["X-Local-Mark"], found.group(1))

    def poll(self, path: str, until: Any, *, clients: int = 6, limit: int = 20_000) -> list[Page]:
        """Request ``path`` from ``clients`` threads at once until ``until(pages)`` holds
        (checked after every response), ``limit`` responses or ``TIMEOUT``; every response is
        returned (:meth:`reached` says whether ``until`` was reached)."""
        pages: list[Page] = []
        lock = threading.Lock()
        done = threading.Event()
        deadline = time.monotonic() + TIMEOUT

        def client() -> None:
            while not done.is_set():
                page = self.get(path)
                with lock:
                    pages.append(page)
                    if until(pages) or len(pages) >= limit or time.monotonic() > deadline:
                        done.set()

        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(client) for _ in range(clients)]:
                future.result()
        return pages

    def reached(self, pages: list[Page], until: Any) -> None:
        assert until(pages), (
            f"not reached after {len(pages)} responses: "
            f"{Counter((p.pid, p.cache, p.price) for p in pages)}\n{self.log()}"
        )

    def stop(self) -> None:
        terminate(self.process, timeout=20)


def every_worker(workers: set[int], test: Any, times: int = 1) -> Any:
    """``until`` for :meth:`Shop.poll`: every worker served ``times`` pages passing ``test``."""

    def until(pages: list[Page]) -> bool:
        counts = Counter(p.pid for p in pages if test(p))
        return all(counts[w] >= times for w in workers)

    return until


@dataclass
class Running:
    environment: Environment
    writer: Writer
    shop: Shop
    path: str
    pk: int

    def warm(self) -> set[int]:
        """Every worker serves the product from its local copy; returns the workers."""
        workers = self.shop.workers()
        until = every_worker(workers, lambda p: p.cache == "hit-local")
        self.shop.reached(self.shop.poll(self.path, until), until)
        return workers

    def write_and_check(self, old: str, new: str, *, then: Any = None) -> list[Page]:
        """Change the price from ``old`` to ``new`` in the writer (``then()`` first runs
        between warm-up and write), then poll every worker: no stale page, every worker
        serves the new price, then from its local copy again."""
        workers = self.shop.workers()
        if then is not None:
            then()
        seq = self.writer.price(self.pk, new)
        until = every_worker(workers, lambda p: p.price == new and p.cache == "hit-local", 20)
        pages = self.shop.poll(self.path, until)
        stale = [p for p in pages if p.stale_after(old, seq)]
        assert not stale, f"served {old} after the write (sequence {seq}): {stale[:10]}"
        self.shop.reached(pages, until)
        assert {p.pid for p in pages} == workers, "a worker was replaced during the test"
        return pages


@pytest.fixture
def running(tmp_path: Path, database_url: str | None) -> Iterator[Any]:
    """``running(redis_url, *gunicorn_args)`` starts the writer and the shop."""
    started: list[Running] = []

    def start(redis_url: str, *args: str, workers: int = 3) -> Running:
        environment = Environment(tmp_path, redis_url, database_url)
        started.append(environment)
        writer = Writer(environment, tmp_path / "writer.log")
        started.append(writer)
        [pk] = writer.send(op="seed", price="10.00")["pks"]
        shop = Shop(environment, tmp_path / "gunicorn.log", *args)
        started.append(shop)
        run = Running(environment, writer, shop, f"/products/{pk}/", pk)
        shop.wait_serving(run.path, workers)
        return run

    yield start
    for part in reversed(started):
        if isinstance(part, Environment):
            part.delete_keys()
        else:
            part.stop()


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-load", "preload"])
def test_a_write_elsewhere_drops_every_workers_copy(running: Any, preload: bool):
    run = running(settings.REDIS_URL, "--workers", "3", "--worker-class", "sync",
                  *(["--preload"] if preload else []))
    workers = run.warm()
    assert len(workers) == 3
    prices = ["10.00", "11.00", "12.00", "13.00", "14.00"]
    for old, new in zip(prices, prices[1:]):
        run.write_and_check(old, new)


def test_killed_subscriptions_flush_the_local_copies(private_redis: PrivateRedis, running: Any):
    """``CLIENT KILL TYPE pubsub`` (on a server of the test's own: it would cut every
    subscriber of a shared one), then a write while the workers resubscribe."""
    run = running(private_redis.url, "--workers", "3", "--worker-class", "sync")
    run.warm()
    client = redis.Redis(port=private_redis.port)
    channel = f"{run.environment.key_prefix}:1:ci:announce"

    def subscribed() -> int:
        return int(client.pubsub_numsub(channel)[0][1])

    assert subscribed() == 3
    prices = ["10.00", "20.00", "30.00", "40.00"]
    for old, new in zip(prices, prices[1:]):
        run.write_and_check(
            old, new, then=lambda: client.client_kill_filter(_type="pubsub") or None
        )
        assert wait_for(lambda: subscribed() == 3, timeout=TIMEOUT)


def test_a_redis_restart_flushes_the_local_copies(private_redis: PrivateRedis, running: Any):
    run = running(private_redis.url, "--workers", "3", "--worker-class", "sync")
    run.warm()

    def restart() -> None:
        private_redis.stop()
        private_redis.start()
        run.writer.send(op="ping")

    run.write_and_check("10.00", "20.00", then=restart)
    run.write_and_check("20.00", "30.00")  # and the subscriptions keep working


def test_threads_of_one_worker_read_while_another_process_writes(running: Any):
    run = running(settings.REDIS_URL, "--workers", "1", "--worker-class", "gthread",
                  "--threads", "4", workers=1)
    run.warm()
    prices = ["10.00", "10.50", "11.00", "11.50", "12.00"]
    for old, new in zip(prices, prices[1:]):
        pages = run.write_and_check(old, new)
        assert len({p.pid for p in pages}) == 1


def test_a_fork_after_first_use_starts_its_own_subscription(tmp_path: Path):
    """A process fills its local cache, forks; the parent invalidates what the child copied
    before the child has a subscription of its own. The child must not serve that copy; it
    subscribes, and each process sees the other's invalidations."""
    environment = Environment(tmp_path, settings.REDIS_URL, None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tests.local_support", "fork"], cwd=ROOT,
            env=environment.env, capture_output=True, text=True, timeout=TIMEOUT,
        )
    finally:
        environment.delete_keys()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    child = report["child"]
    assert "error" not in child, child
    assert report["parent_live"] is True
    assert report["parent_before"] == [{"value": "parent-1", "local": False},
                                       {"value": "parent-1", "local": True}]
    assert report["parent_entries_at_fork"] == 1
    # The parent invalidated and refilled: Redis holds "parent-2", the child's memory "parent-1".
    assert report["parent_after_invalidating"] == {"value": "parent-2", "local": False}
    assert child["inherited_entries"] == 0
    assert child["live_at_start"] is False
    assert child["first_read"] == {"value": "parent-2", "local": False}
    assert child["live"] is True and child["own_subscriber"] is True
    assert child["reads"] == [{"value": "child-2", "local": False},
                              {"value": "child-2", "local": True}]
    assert child["saw_parent_invalidation"] is True
    assert child["after"] == {"value": "child-3", "local": False}
    assert report["parent_fill"] == [{"value": "parent-3", "local": False},
                                     {"value": "parent-3", "local": True}]
    assert report["parent_saw_child_invalidation"] is True
    assert report["parent_after"] == {"value": "parent-4", "local": False}
    assert report["child_exit"] == 0
    assert report["parent_still_live"] is True
