"""The services a run needs, started and removed by the run: a private redis-server, a
PostgreSQL database cloned from a seeded template, a Celery worker, an outbox relay.

A private redis-server (on a free loopback port, no persistence) keeps SLOWLOG and memory
figures about this contender alone, and never touches the shared Redis on 6379. The
PostgreSQL server is shared: every database created here is named ``bench_*`` and dropped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[int]:
    """A private redis-server on a free port; yields the port, removes everything after."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: the benchmark starts its own")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--slowlog-log-slower-than", "1000", "--slowlog-max-len", "200000"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.025)
        else:
            raise RuntimeError(f"private redis-server did not answer on port {port}")
        client.close()
        yield port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _admin() -> Any:
    import psycopg
    from dj_database_url import parse

    cfg = parse(database_url())
    return psycopg.connect(
        host=cfg["HOST"] or "127.0.0.1", port=cfg["PORT"] or 5432, user=cfg["USER"] or "postgres",
        password=cfg["PASSWORD"] or None, dbname="postgres", autocommit=True,
    )


def database_exists(name: str) -> bool:
    with _admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() \
            is not None


def create_database(name: str, template: str | None = None) -> None:
    _check_name(name)
    with _admin() as conn:
        if template:
            _check_name(template)
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    _check_name(name)
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_name(name: str) -> None:
    if not name.startswith("bench_") or not name.replace("_", "").isalnum():
        raise ValueError(f"refusing database name {name!r}: benchmark databases are bench_*")


@contextmanager
def celery_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One worker, solo pool (one process, one core), consuming the run's queue; pinned to
    the CPUs in ``BENCH_WORKER_CPUS`` (``taskset -c`` syntax) when that is set."""
    cpus = os.environ.get("BENCH_WORKER_CPUS")
    pin = ["taskset", "-c", cpus] if cpus else []
    with _process(
        [*pin, sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
         "--pool", "solo", "--concurrency", "1", "-Q", "bench", "-l", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"], env, log,
    ) as worker:
        yield worker


@contextmanager
def outbox_relay(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One relay process (``manage.py relay_outbox --loop``, see
    :mod:`benchmarks.outbox_relay`) delivering the run's outbox."""
    with _process([sys.executable, "-m", "benchmarks", "relay"], env, log) as relay:
        yield relay


@contextmanager
def _process(
    argv: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running, its output appended to ``log``; SIGTERM (then SIGKILL) afterwards."""
    with open(log, "ab") as out:
        worker = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
