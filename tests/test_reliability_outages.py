"""Long-running commands outlive outages: ``relay_outbox --loop`` keeps relaying across a
PostgreSQL outage, a terminated backend and a Redis outage, in a real child process.

The child reaches PostgreSQL through :class:`tests.faults.TcpProxy` (``down()`` closes its
connection and refuses new ones) under an ``application_name`` of its own, so the test can also
end its backend with ``pg_terminate_backend``; the cache is a private ``redis-server`` the test
stops and starts. The test stops the child with SIGTERM, as systemd or Kubernetes would.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from cache_invalidation import TaggedCache
from cache_invalidation.models import OutboxEvent
from tests.conftest import PrivateRedis, wait_for
from tests.faults import TcpProxy, row
from tests.test_reliability_faults import (  # noqa: F401  (fixtures used by name)
    ROOT,
    assert_cache_equals_database,
    cache_settings,
    connection_through,
    database_proxy,
    database_url_via,
    in_thread,
    page_key,
    postgresql_only,
    products,
    rename,
    warm,
)

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

TIMEOUT = 30


def start_relay(tmp_path: Path, database_url: str, redis_url: str, prefix: str) -> tuple[Any, Path]:
    log = tmp_path / "relay.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_process",
        "PROCESS_DB": str(tmp_path / "unused.sqlite3"),
        "PROCESS_DATABASE_URL": database_url,
        "PROCESS_KEY_PREFIX": prefix,
        "TEST_REDIS_URL": redis_url,
    }
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "manage.py", "relay_outbox", "--loop", "--interval", "0.2",
             "-v", "2"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    return child, log


def terminate_backends(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            [application_name],
        )
        return int(cursor.fetchone()[0])


@postgresql_only
@row(
    "``relay_outbox --loop`` during PostgreSQL and Redis outages (issue 13, 6)",
    "a child ``relay_outbox --loop`` reaches PostgreSQL through the proxy: the proxy goes down "
    "for a while, then its backend is ended with pg_terminate_backend, then the private "
    "redis-server is stopped and started; rows are written to the outbox during each outage",
    "the loop logs each failed round, closes the broken connection, backs off and goes on: "
    "every row is delivered after each outage, the cache matches the database, and SIGTERM "
    "ends it with its summary and exit code 0",
)
def test_relay_loop_outlives_database_and_redis_outages(settings, tmp_path, products,  # noqa: F811
                                                        private_redis: PrivateRedis,
                                                        database_proxy: TcpProxy):  # noqa: F811
    prefix = f"citest-relay-{uuid.uuid4().hex[:8]}"
    settings.CACHES = {**settings.CACHES,
                       "private": {**cache_settings(private_redis.url), "KEY_PREFIX": prefix}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox", "CACHE_ALIAS": "private",
                                   "OUTBOX_DELIVER_ON_COMMIT": False}
    cache = TaggedCache("private")
    warm(cache, products)
    name = f"ci-relay-{uuid.uuid4().hex[:8]}"
    url = database_url_via(database_proxy) + f"&application_name={name}"
    child, log = start_relay(tmp_path, url, private_redis.url, prefix)

    def delivered() -> bool:
        return not OutboxEvent.objects.exists()

    try:
        rename(products[0], "p0 v1")
        assert wait_for(delivered, timeout=TIMEOUT), log.read_text()
        assert cache.get(page_key(products[0].pk)) is None

        # 1. PostgreSQL unreachable: the relay's connection is closed and reconnecting fails.
        database_proxy.down()
        assert wait_for(lambda: log.read_text().count("Relay round failed") >= 2,
                        timeout=TIMEOUT), log.read_text()
        warm(cache, products)
        rename(products[1], "p1 v1")
        assert OutboxEvent.objects.count() == 1 and child.poll() is None
        database_proxy.up()
        assert wait_for(delivered, timeout=TIMEOUT), log.read_text()
        assert "Relay rounds succeed again after" in log.read_text()

        # 2. The backend is terminated under the relay (a failover, an operator's kill).
        failed_before = log.read_text().count("Relay round failed")
        assert terminate_backends(name) >= 1
        rename(products[2], "p2 v1")
        assert wait_for(delivered, timeout=TIMEOUT), log.read_text()
        assert log.read_text().count("Relay round failed") > failed_before

        # 3. Redis down: the batch fails, stays with its backoff; delivered once Redis is back.
        warm(cache, products)
        private_redis.stop()
        rename(products[0], "p0 v2")
        assert wait_for(lambda: OutboxEvent.objects.filter(attempts__gte=1).exists(),
                        timeout=TIMEOUT), log.read_text()
        assert child.poll() is None
        private_redis.start()
        assert wait_for(delivered, timeout=TIMEOUT), log.read_text()
        assert_cache_equals_database(cache, products)
        assert child.poll() is None, log.read_text()
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # what systemd or Kubernetes sends
        code = child.wait(timeout=TIMEOUT)
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "Delivered " in output.splitlines()[-1], output


@postgresql_only
@row(
    "``relay_outbox`` (one round) with PostgreSQL unreachable (issue 13, 6)",
    "the command's connection goes through the proxy, which is down",
    "exit code 1 with ``The relay could not run: OperationalError: ...``; no traceback",
)
def test_one_relay_round_with_the_database_down_exits_1(database_proxy: TcpProxy):  # noqa: F811
    database_proxy.down()

    def relay() -> Any:
        with connection_through(database_proxy):
            call_command("relay_outbox", stdout=io.StringIO(), stderr=io.StringIO())

    outcome = in_thread(relay)
    error = outcome["error"]
    assert isinstance(error, CommandError) and error.returncode == 1, outcome
    assert str(error).startswith("The relay could not run: OperationalError: ")
