"""What a workload is handed: the contender, the scale, Redis, the writes ledger, the worker
(the Celery worker of ``ours_celery``, the outbox relay of ``ours_outbox``)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contenders import Contender
from .scale import Scale
from .tracking import Writes


@dataclass
class Slowlog:
    """Redis commands executed while capturing, longest first (server time, microseconds)."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def longest(self) -> dict[str, Any]:
        if not self.entries:
            return {"ms": 0.0, "command": None, "commands": 0, "total_ms": 0.0}
        top = max(self.entries, key=lambda e: e["duration"])
        return {
            "ms": round(top["duration"] / 1000, 3),
            "command": _describe(top["command"]),
            "commands": len(self.entries),
            "total_ms": round(sum(e["duration"] for e in self.entries) / 1000, 3),
        }


#: Commands the measurement itself sends, left out of what it measures.
_OWN = (b"SLOWLOG", b"CONFIG", b"INFO", b"DBSIZE", b"MEMORY", b"SCAN")


def _describe(command: Any) -> str:
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text[:60]


class Context:
    def __init__(self, contender: Contender, scale: Scale, redis_port: int, env: dict[str, str],
                 logdir: Path) -> None:
        import redis
        from django.conf import settings

        self.contender = contender
        self.scale = scale
        self.redis = redis.Redis(port=redis_port, db=0)
        self.bookkeeping = redis.Redis.from_url(settings.BOOKKEEPING_URL)
        self.ours = contender.name.startswith("ours")
        self.celery = contender.name == "ours_celery"
        self.outbox = contender.name == "ours_outbox"
        #: Invalidations are applied by another process, which reports them (bookkeeping).
        self.worker = self.celery or self.outbox
        self.writes = Writes(self.ours, recorded=self.outbox)
        #: CPU seconds (user + system) and wall seconds of every worker or relay process
        #: stopped so far.
        self.worker_cpu = 0.0
        self.worker_wall = 0.0
        self._worker_started = 0.0
        self.env = env
        self.logdir = logdir
        self._worker: ExitStack | None = None
        self._worker_process: subprocess.Popen[bytes] | None = None
        from .shop.models import Product

        self.product_ids: list[int] = list(
            Product.objects.order_by("pk").values_list("pk", flat=True))

    # -- Redis ------------------------------------------------------------------------------
    def flush_cache(self) -> None:
        """Empty the cache database of this run's private redis-server (never the broker's)."""
        self.redis.flushdb()

    def cache_keys(self) -> int:
        return int(self.redis.dbsize())

    def keyspace_bytes(self) -> int:
        """``MEMORY USAGE`` of every key in the cache database, summed (sets counted whole)."""
        total = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                total += self._usage(batch)
                batch = []
        return total + (self._usage(batch) if batch else 0)

    def _usage(self, keys: list[bytes]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(n or 0) for n in pipe.execute())

    @contextmanager
    def slowlog(self, threshold_us: int = 0) -> Iterator[Slowlog]:
        """Log every command slower than ``threshold_us`` while the block runs."""
        found = Slowlog()
        self.redis.config_set("slowlog-log-slower-than", threshold_us)
        self.redis.slowlog_reset()
        try:
            yield found
        finally:
            self.redis.config_set("slowlog-log-slower-than", 1000)
            found.entries = [e for e in self.redis.slowlog_get(1_000_000)
                             if not e["command"].startswith(_OWN)]
            self.redis.slowlog_reset()

    def settle(self, timeout: float = 60.0) -> int:
        """Wait until every recorded write's invalidation was applied (by the worker or the
        relay); returns how many were not."""
        return self.writes.resolve(self.bookkeeping if self.worker else None, timeout)

    # -- worker -----------------------------------------------------------------------------
    def start_worker(self, **env: str) -> None:
        """Start the Celery worker or the outbox relay (no-op for the others, or if running),
        its environment updated by ``env``."""
        if not self.worker or self._worker is not None:
            return
        from . import infra
        from .tracking import READY

        self.bookkeeping.delete(READY)
        stack = ExitStack()
        start = infra.celery_worker if self.celery else infra.outbox_relay
        log = self.logdir / ("worker.log" if self.celery else "relay.log")
        self._worker_process = stack.enter_context(start({**self.env, **env}, log))
        self._worker_started = time.time()
        self._worker = stack
        deadline = time.time() + 60
        while not self.bookkeeping.get(READY):
            if self._worker_process.poll() is not None or time.time() > deadline:
                stack.close()
                self._worker = None
                tail = log.read_text(errors="replace")[-3000:]
                what = "Celery worker" if self.celery else "outbox relay"
                raise RuntimeError(f"the {what} did not start:\n{tail}")
            time.sleep(0.05)

    def stop_worker(self) -> None:
        if self._worker is not None:
            assert self._worker_process is not None
            self.worker_cpu += _cpu_seconds(self._worker_process.pid)
            self.worker_wall += time.time() - self._worker_started
            self._worker.close()
            self._worker = None
            self._worker_process = None

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Wait until the worker has nothing queued or in flight, or the relay has no row
        left (no-op for the others)."""
        if not self.worker or self._worker is None:
            return
        deadline = time.time() + timeout
        if self.outbox:
            from cache_invalidation.models import OutboxEvent

            # A delivered batch's rows are deleted in the relay's transaction, after its
            # invalidation was applied and reported: no row left, nothing left to report.
            while OutboxEvent.objects.exists() and time.time() < deadline:
                time.sleep(0.01)
            return
        import redis
        from django.conf import settings

        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        while time.time() < deadline:
            if not broker.llen("bench") and not broker.hlen("unacked"):
                break
            time.sleep(0.02)
        time.sleep(0.1)  # the last task's bookkeeping after its ack

    def clear_applied(self) -> None:
        from .tracking import APPLIED

        if self.worker:
            self.bookkeeping.delete(APPLIED)
        self.writes.reset()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(base)
    return env
