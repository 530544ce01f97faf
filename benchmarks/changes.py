"""Change data capture: commit -> invalidated for raw SQL writes, and changes per second.

Starts a private PostgreSQL 15 cluster (``wal_level = logical``; initdb as the ``postgres``
OS user when run as root) and migrates the shop into it, with the suite's Redis cache
(``tests/settings_cdc.py``). Then:

* **latency**: ``manage.py consume_changes --interval I`` runs as a subprocess; for each of N
  raw ``UPDATE`` statements (autocommit, from psycopg) an entry tagged with the row's tag is
  stored first, and the time from the statement's return (committed) to the entry being gone
  (polled every 0.5 ms) is one sample;
* **throughput**: with the consumer stopped, T transactions of R rows each are written; one
  in-process consumer then works through them: rows decoded, resolved and applied (sync
  transport, real Redis) per second, and, separately, rows peeked and decoded per second.

Everything it starts it removes. ``--quick`` is the CI size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ci-bench-cdc-"))
        self.port = _free_port()
        self.user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.user = ["runuser", "-u", "postgres", "--"]

    def run(self, *args: str) -> None:
        subprocess.run([*self.user, *args], check=True, cwd=self.dir, capture_output=True)

    def start(self) -> None:
        data = str(self.dir / "data")
        self.run(str(BIN / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.run(
            str(BIN / "pg_ctl"), "-D", data, "-l", str(self.dir / "log"), "-w", "-o",
            f"-c wal_level=logical -c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.dir} -c fsync=off", "start",
        )
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE cdc")

    def url(self, db: str = "cdc") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        try:
            self.run(str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _latency(cluster: _Cluster, samples: int, interval: float) -> dict[str, Any]:
    import psycopg
    from django.conf import settings

    from benchmarks.stats import summary_ms
    from cache_invalidation import tagged_cache

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_cdc",
           "CDC_DATABASE_URL": cluster.url(), "PROCESS_KEY_PREFIX": settings.KEY_PREFIX}
    consumer = subprocess.Popen(
        [sys.executable, "manage.py", "consume_changes", "--interval", str(interval)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    seconds: list[float] = []
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            time.sleep(2)  # the consumer's start-up
            for i in range(samples):
                pk = 1 + i % 100
                tagged_cache.set(f"page-{pk}", "x", tags=[f"product:{pk}"])
                if tagged_cache.get(f"page-{pk}") != "x":
                    raise RuntimeError("the entry was not stored: nothing would be measured")
                time.sleep(random.random() * interval)  # land anywhere in the consumer's cycle
                conn.execute("UPDATE shop_product SET name = %s WHERE id = %s", [f"n{i}", pk])
                committed = time.perf_counter()
                while tagged_cache.get(f"page-{pk}") is not None:
                    if time.perf_counter() - committed > 10:
                        raise RuntimeError(f"write {i} was not invalidated within 10 s")
                    time.sleep(0.0005)
                seconds.append(time.perf_counter() - committed)
    finally:
        consumer.terminate()
        consumer.wait(30)
    return {"interval_s": interval, **summary_ms(seconds)}


def _throughput(cluster: _Cluster, transactions: int, rows: int) -> dict[str, Any]:
    import psycopg
    from django.db import connection

    from cache_invalidation import consumer, pgoutput, replication
    from cache_invalidation.conf import get_config

    slot, publication = get_config()["CHANGES_SLOT"], get_config()["CHANGES_PUBLICATION"]
    replication.advance(connection, slot, replication.flush_lsn(connection))
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        for t in range(transactions):
            with conn.transaction():
                conn.execute(
                    "UPDATE shop_product SET name = %s WHERE id <= %s", [f"t{t}", rows]
                )
    total = transactions * rows
    started = time.perf_counter()
    upto = replication.flush_lsn(connection)
    messages = replication.peek(connection, slot, publication, upto, 10**9)
    decoder = pgoutput.Decoder()
    decoded = sum(len(t.changes) for t in map(decoder.feed, messages) if t is not None)
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    done = 0
    while True:
        result = consumer.consume_round(connection, "default", slot, publication, 10_000)
        done += result.transactions
        if not result.transactions:
            break
    applied_s = time.perf_counter() - started
    return {
        "transactions": transactions, "rows_per_transaction": rows, "rows": total,
        "decoded_rows": decoded, "transactions_published": done,
        "peek_decode_rows_per_s": round(decoded / decode_s),
        "end_to_end_rows_per_s": round(total / applied_s),
        "end_to_end_s": round(applied_s, 2),
    }


def _forget_keys() -> None:
    """Delete the Redis keys of this run (its own prefix; never a flush)."""
    try:
        import redis
        from django.conf import settings
    except ImportError:  # pragma: no cover
        return
    if not settings.configured:
        return
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"{settings.KEY_PREFIX}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks changes")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--interval", type=float, action="append", default=None)
    args = parser.parse_args(argv)
    samples = args.samples or (30 if args.quick else 300)
    intervals = args.interval or ([0.1] if args.quick else [0.2, 0.1, 0.05, 0.01])
    if not (BIN / "initdb").exists():
        print(f"benchmarks changes: PostgreSQL server binaries not found in {BIN} (PG_BIN)")
        return 3
    cluster = _Cluster()
    try:
        cluster.start()
        os.environ["CDC_DATABASE_URL"] = cluster.url()
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings_cdc"
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("consume_changes", "--setup", verbosity=0)
        import psycopg

        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("INSERT INTO shop_category (id, name, slug) VALUES (1, 'c', 'c')")
            conn.execute(
                "INSERT INTO shop_product (id, name, price, category_id, description) "
                "SELECT g, 'p', 1, 1, '' FROM generate_series(1, 1000) g"
            )
        import logging

        # Escalations of the 1,000-row transactions are expected: storm control at work.
        logging.getLogger("cache_invalidation").setLevel(logging.ERROR)
        results: dict[str, Any] = {
            "latency": [_latency(cluster, samples, i) for i in intervals],
            "throughput": [
                _throughput(cluster, *shape)
                for shape in (((200, 1), (20, 100)) if args.quick else ((2000, 1), (100, 1000)))
            ],
        }
        print(json.dumps(results, indent=2))
    finally:
        cluster.stop()
        _forget_keys()
    return 0
