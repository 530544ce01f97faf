"""Where metric counts go: the bucket layout, and the in-process aggregate that feeds it.

Counting a batch used to add 15 commands to its invalidation script (three hashes, four or
five fields each, and their expiries), and a ``celery`` publish paid a round trip of its own
for its ``published`` count. Counts are now added to an aggregate in this process, per cache
alias and per minute they happened in, and written later, in one of two ways:

* **with the next script call** of this process, once the oldest unwritten count is
  ``METRICS_FLUSH_INTERVAL`` seconds old (no round trip of its own), or
* **on a timer**, by a daemon thread ``METRICS_FLUSH_INTERVAL`` seconds after the first
  unwritten count, when no script call took them first (a web process that only publishes to
  Celery; an idle worker).

Each count lands in the bucket of the minute it happened in, whenever it is written, so the
buckets stay exact to the minute across processes; a reader sees another process's counts up
to ``METRICS_FLUSH_INTERVAL`` seconds late (its own at once: reading flushes this process's
aggregate first). ``METRICS_FLUSH_INTERVAL = 0`` writes every count with the batch it counts,
as before.

**What a crash loses**: a process that dies without running its exit handlers
(``SIGKILL``, ``os._exit``, a segfault) loses the counts it had not written, at most
``METRICS_FLUSH_INTERVAL`` seconds' worth; a clean exit writes them (``atexit``). A write that
fails (the cache is down) keeps the counts for the next attempt; a reply lost *after* Redis
applied the write can make those counts appear twice. A forked child starts with an empty
aggregate (its parent still owns, and writes, what was counted before the fork).

This module does no I/O of its own except through a backend's ``write_bookkeeping``.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import Counter
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .backends import backend_for
from .bookkeeping import Bookkeeping
from .conf import CONFIG_SETTINGS, get_config

PREFIX = "ci:stats:"
MINUTE, HOUR = 60, 3600
TTL_MINUTE = 2 * HOUR
TTL_HOUR = (24 + 2) * HOUR
TTL_TOTAL = 7 * 24 * HOUR
#: Seconds before counts whose write failed are tried again (by the timer).
RETRY_AFTER = 1.0

#: Unwritten counts: (cache alias, minute) -> fields.
Taken = dict[tuple[str, int], Counter[str]]

_lock = threading.Lock()
_counts: Taken = {}
_oldest: float | None = None  # time.monotonic() of the oldest unwritten count
_timer: threading.Timer | None = None


def interval() -> float:
    return max(0.0, float(get_config()["METRICS_FLUSH_INTERVAL"]))


def bucket_writes(taken: Taken, alias: str) -> list[tuple[str, int, dict[str, int]]]:
    """The counts of ``alias`` in ``taken`` as increments of their minute hashes, their hour
    hashes and the running total (for :class:`~.bookkeeping.Bookkeeping`)."""
    minutes: dict[int, Counter[str]] = {}
    hours: dict[int, Counter[str]] = {}
    total: Counter[str] = Counter()
    for (name, minute), fields in taken.items():
        if name != alias or not fields:
            continue
        minutes.setdefault(minute, Counter()).update(fields)
        hours.setdefault(minute * MINUTE // HOUR, Counter()).update(fields)
        total.update(fields)
    writes = [(f"{PREFIX}min:{m}", TTL_MINUTE, dict(f)) for m, f in sorted(minutes.items())]
    writes += [(f"{PREFIX}hour:{h}", TTL_HOUR, dict(f)) for h, f in sorted(hours.items())]
    if total:
        writes.append((f"{PREFIX}total", TTL_TOTAL, dict(total)))
    return writes


def add(alias: str, fields: Counter[str], now: float) -> None:
    """Count ``fields`` at ``now`` (seconds since the epoch), to be written later (at once,
    in this call, with ``METRICS_FLUSH_INTERVAL = 0``)."""
    global _oldest

    if not fields:
        return
    with _lock:
        _counts.setdefault((alias, int(now // MINUTE)), Counter()).update(fields)
        if _oldest is None:
            _oldest = time.monotonic()
        if interval() > 0:
            _arm()
            return
    flush()


def take(alias: str, *, force: bool = False) -> Taken | None:
    """Everything unwritten of ``alias``, for a script call to write, when writing it is due
    (or ``force``); else None. Give it back with :func:`restore` if the call failed."""
    global _oldest

    with _lock:
        due = _oldest is not None and time.monotonic() - _oldest >= interval()
        if not force and not due:
            return None
        taken = {k: _counts.pop(k) for k in [k for k in _counts if k[0] == alias]}
        if not _counts:
            _oldest = None
    return taken


def restore(taken: Taken) -> None:
    """Give back counts that could not be written."""
    global _oldest

    with _lock:
        for key, fields in taken.items():
            if fields:
                _counts.setdefault(key, Counter()).update(fields)
        if _counts and _oldest is None:
            _oldest = time.monotonic()
        if _counts:
            # Retried by the timer, not in the failing caller's thread, and never in a loop.
            _arm(max(interval(), RETRY_AFTER))


def flush() -> None:
    """Write every unwritten count now (one pipelined round trip per cache alias on Redis).
    Never raises: what could not be written is kept for the next attempt."""
    global _oldest

    with _lock:
        taken = dict(_counts)
        _counts.clear()
        _oldest = None
    for alias in sorted({name for name, _ in taken}):
        book = Bookkeeping(counters=bucket_writes(taken, alias))
        try:
            backend_for(alias).write_bookkeeping(book, "metrics")
        except Exception as exc:  # counting must never break the work it counts
            book.failed(exc, "metrics")
        if not book.written:
            restore({k: v for k, v in taken.items() if k[0] == alias})


def forget() -> None:
    """Drop every unwritten count (the test suite, after it emptied the cache)."""
    global _oldest

    with _lock:
        _counts.clear()
        _oldest = None
        _disarm()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # A timer armed under the old METRICS_FLUSH_INTERVAL must not hold the counts that long.
    if setting in CONFIG_SETTINGS:
        with _lock:
            _disarm()
            if _counts:
                _arm()


def _disarm() -> None:
    global _timer

    if _timer is not None:
        _timer.cancel()
        _timer = None


def _arm(delay: float | None = None) -> None:
    """Start the timer that writes the aggregate, unless one is running (under ``_lock``)."""
    global _timer

    if _timer is not None and _timer.is_alive():
        return
    delay = interval() if delay is None else delay
    _timer = threading.Timer(delay, _on_timer)
    _timer.daemon = True
    _timer.name = "cache_invalidation-metrics"
    _timer.start()


def _on_timer() -> None:
    global _timer

    with _lock:
        _timer = None
    flush()


def _after_fork() -> None:
    global _oldest, _timer, _lock

    _lock = threading.Lock()  # a thread may have held it at the fork
    _counts.clear()
    _oldest = None
    _timer = None


os.register_at_fork(after_in_child=_after_fork)
atexit.register(flush)
