"""Fixtures: real Redis, a real Celery worker, private Redis servers for outage tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.cache import caches
from django.db import OperationalError

from cache_invalidation import signals


def _redis_or_fail(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is not answering at {url}: {exc}. Start it (see README.rst).", 3)
    return client


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    return _redis_or_fail(settings.REDIS_URL)


@pytest.fixture(autouse=True)
def _clean_caches(redis_client: redis.Redis) -> Iterator[None]:
    yield
    keys = list(redis_client.scan_iter(match=f"{settings.KEY_PREFIX}*", count=1000))
    for start in range(0, len(keys), 500):
        redis_client.delete(*keys[start : start + 500])
    caches["locmem"].clear()
    from cache_invalidation import metricstore, storm

    storm.forget_rates()  # what this process learned of the rate counts just deleted
    metricstore.forget()  # what this process counted and had not written to them yet


class Recorder:
    """Collects what the public signals report."""

    def __init__(self) -> None:
        self.published: list[list[Any]] = []
        self.applied: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []

    def on_published(self, events: list[Any], **kwargs: Any) -> None:
        self.published.append(events)

    def on_applied(self, **kwargs: Any) -> None:
        self.applied.append(kwargs)

    def on_failed(self, **kwargs: Any) -> None:
        self.failed.append(kwargs)

    @property
    def tags(self) -> set[str]:
        return {t for batch in self.published for e in batch for t in e.tags}

    @property
    def keys(self) -> set[str]:
        return {k for batch in self.published for e in batch for k in e.keys}

    @property
    def events(self) -> list[Any]:
        return [e for batch in self.published for e in batch]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    signals.invalidation_published.connect(rec.on_published, dispatch_uid="test-published")
    signals.invalidation_applied.connect(rec.on_applied, dispatch_uid="test-applied")
    signals.invalidation_failed.connect(rec.on_failed, dispatch_uid="test-failed")
    yield rec
    signals.invalidation_published.disconnect(dispatch_uid="test-published")
    signals.invalidation_applied.disconnect(dispatch_uid="test-applied")
    signals.invalidation_failed.disconnect(dispatch_uid="test-failed")


def terminate(process: Any, timeout: float = 15) -> None:
    """SIGTERM ``process`` and wait; SIGKILL it if it is still running after ``timeout``."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _holds(predicate: Any) -> bool:
    """The predicate's answer; "not yet" while another thread holds the table it reads.

    The SQLite test database is an in-memory database in shared-cache mode: while the
    in-process worker's thread writes a table, a read of it from the test's thread fails at once
    with "database table is locked" (table locks of shared cache wait for no busy timeout).
    """
    try:
        return bool(predicate())
    except OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _holds(predicate):
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture(scope="session")
def celery_app() -> Any:
    from testproject.celery import app

    _redis_or_fail(settings.CELERY_BROKER_URL)
    return app


#: Why the suite's worker had stopped, each time it was started again.
WORKER_RESTARTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for number, reason in enumerate(WORKER_RESTARTS, 1):
        terminalreporter.write_sep("-", f"the suite's Celery worker had stopped ({number})")
        terminalreporter.write_line(reason)


class SuiteWorker:
    """The suite's worker thread, started once and started again if something stopped it.

    A worker thread of the test process stops for good on any error that escapes its consumer
    (celery logs it as "Unrecoverable error") and every later test that needs it would time out
    waiting for tasks that nobody runs. It is started again before such a test, and the reason
    it stopped is printed at the end of the run (``pytest_terminal_summary``), not lost.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._context: Any = None
        self.worker: Any = None
        self.stopped_because: str | None = None

    def start(self) -> Any:
        from celery.contrib.testing.worker import TestWorkController, start_worker

        suite = self

        class Controller(TestWorkController):  # type: ignore[misc]
            def stop(self, *args: Any, **kwargs: Any) -> None:
                if suite.worker is self and suite.stopped_because is None:
                    failed = sys.exc_info()[0] is not None
                    suite.stopped_because = (
                        traceback.format_exc() if failed
                        else "".join(traceback.format_stack()[-12:])
                    )
                super().stop(*args, **kwargs)

        self.stopped_because = None
        self._context = start_worker(
            self.app, pool="solo", concurrency=1, perform_ping_check=False, shutdown_timeout=10,
            WorkController=Controller,
        )
        self.worker = self._context.__enter__()
        return self.worker

    def running(self) -> bool:
        from celery.bootsteps import RUN

        return self.worker is not None and self.worker.blueprint.state == RUN

    def ensure(self) -> Any:
        if not self.running():
            reason = self.stopped_because or "no reason recorded"
            self.close()
            WORKER_RESTARTS.append(reason)
            self.start()
        return self.worker

    def close(self) -> None:
        context, self._context, self.worker = self._context, None, None
        if context is not None:
            self.stopped_because = "the end of the test session"
            context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def _suite_worker(celery_app: Any) -> Iterator[SuiteWorker]:
    suite = SuiteWorker(celery_app)
    suite.start()
    yield suite
    suite.close()
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    leftovers = [k for k in broker.scan_iter(match=f"*{queue}*", count=1000)]
    if leftovers:
        broker.delete(*leftovers)


@pytest.fixture
def celery_worker(_suite_worker: SuiteWorker) -> Any:
    """A real worker thread consuming from the real broker (the suite's own queue)."""
    return _suite_worker.ensure()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, on its own port, that the test may stop and start."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; the outage tests start their own.")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
             *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        if not wait_for(lambda: _pings(client), timeout=10):
            pytest.fail(f"private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# -- the browser tests (tests/test_browser.py, tests/browser_support.py) ----------------------
CHROMIUM_PROBLEM = pytest.StashKey["str | None"]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """TEST_NO_BROWSER=1 (what ``runtests.py --no-browser`` and its PostgreSQL pass set)
    deselects the tests marked ``browser``."""
    from tests import browser_support

    if not browser_support.opted_out():
        return
    browser = [item for item in items if item.get_closest_marker("browser")]
    if browser:
        config.hook.pytest_deselected(items=browser)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a browser test is selected, make sure Chromium is there: install it (as root,
    with apt-get) before any test starts, outside every test's timeout."""
    if not any(item.get_closest_marker("browser") for item in session.items):
        return
    from tests import browser_support

    capture = session.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            problem = browser_support.ensure_chromium()
    else:
        problem = browser_support.ensure_chromium()
    session.config.stash[CHROMIUM_PROBLEM] = problem


@pytest.fixture(scope="session")
def chromium(pytestconfig: pytest.Config) -> str:
    """The Chromium binary for Playwright, or a loud failure saying how to get it."""
    from tests import browser_support

    problem = pytestconfig.stash.get(CHROMIUM_PROBLEM, None) or browser_support.chromium_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    return browser_support.CHROMIUM
