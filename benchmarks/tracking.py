"""When a write committed, when its invalidation was applied, and what Redis did meanwhile.

- :class:`CommitClock` wraps the ``_commit`` of each thread's connection: the time recorded is
  the moment PostgreSQL acknowledged the COMMIT, before any ``on_commit`` hook ran, whichever
  library registered it.
- :class:`Writes` runs a write in ``transaction.atomic()`` and records commit time, the time
  ``atomic()`` returned (hooks done: cacheops, cachalot and the ``sync`` transport have
  invalidated by then) and, for this app, the ids of the events it published (from the
  ``invalidation_published`` signal; for ``outbox``, which does not send it for model writes,
  from :mod:`cache_invalidation.recorder`, the debug toolbar's record of a request).
- :func:`applied_times` pairs event ids with the moment ``invalidation_applied`` fired: in
  this process for ``sync``, in the worker (a Redis list, see :mod:`benchmarks.celery_app`)
  for ``celery``, in the relay (the same list, see :mod:`benchmarks.outbox_relay`) for
  ``outbox``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

#: Bookkeeping keys the worker and the relay write (:mod:`benchmarks.celery_app`,
#: :mod:`benchmarks.outbox_relay`).
APPLIED = "bench:applied"
READY = "bench:ready"


class CommitClock:
    def __init__(self) -> None:
        self.local = threading.local()

    def install(self) -> None:
        """Wrap this thread's connection (idempotent)."""
        from django.db import connections

        wrapper = connections["default"]
        if getattr(wrapper, "_bench_clock", None) is self:
            return
        original = type(wrapper)._commit
        local = self.local

        def _commit() -> Any:
            local.sent = time.time()
            result = original(wrapper)
            local.at = time.time()
            return result

        wrapper._commit = _commit  # type: ignore[method-assign]
        wrapper._bench_clock = self  # type: ignore[attr-defined]

    def last(self) -> tuple[float | None, float | None]:
        """(COMMIT sent, COMMIT acknowledged) of this thread's last commit. The new rows
        became visible to other connections somewhere in between."""
        return getattr(self.local, "sent", None), getattr(self.local, "at", None)


@dataclass
class Write:
    kind: str
    started: float
    committed: float  # COMMIT acknowledged: visible to every reader from here on
    done: float
    events: list[str] = field(default_factory=list)
    pks: list[int] = field(default_factory=list)
    applied: float | None = None
    queries: int = 0
    commit_sent: float | None = None  # COMMIT sent: possibly visible from here on

    @property
    def latency(self) -> float:
        return self.done - self.started

    def window(self) -> float | None:
        """Commit -> invalidated. For this app, when the last event of the write was applied;
        for libraries that invalidate in their commit hooks, when ``atomic()`` returned."""
        end = self.applied if self.events else self.done
        return None if end is None else max(0.0, end - self.committed)


class Writes:
    """Runs writes and remembers them; thread-safe."""

    def __init__(self, ours: bool, recorded: bool = False) -> None:
        self.ours = ours
        #: Take the published ids from a recording of each write (see the module docstring).
        self.recorded = recorded
        self.clock = CommitClock()
        self.local = threading.local()
        self.lock = threading.Lock()
        self.records: list[Write] = []
        self.applied_local: dict[str, float] = {}
        if ours:
            from cache_invalidation import signals

            signals.invalidation_published.connect(self._published, dispatch_uid="bench.pub")
            signals.invalidation_applied.connect(self._applied, dispatch_uid="bench.applied")

    def _published(self, sender: Any, events: Any, **kwargs: Any) -> None:
        ids = getattr(self.local, "ids", None)
        if ids is not None:
            ids.extend(e.id for e in events)

    def _applied(self, sender: Any, events: Any, **kwargs: Any) -> None:
        now = time.time()
        with self.lock:
            for event in events:
                self.applied_local[event.id] = now

    def run(self, kind: str, fn: Callable[[], Any], pks: list[int] | None = None,
            record: bool = True) -> tuple[Write, Any]:
        self.clock.install()
        self.local.ids = []
        token = None
        if self.recorded:
            from cache_invalidation import recorder

            token = recorder.start()
        started = time.time()
        try:
            with transaction.atomic():
                result = fn()
            done = time.time()
        finally:
            if token is not None:
                recording = recorder.stop(token)
                if recording is not None:
                    self.local.ids.extend(i["event_id"] for i in recording.invalidations
                                          if i["source"] == "event")
        sent, committed = self.clock.last()
        ids = list(dict.fromkeys(self.local.ids))  # once, should both sources report an id
        write = Write(kind, started, committed or done, done, ids, pks or [],
                      commit_sent=sent)
        self.local.ids = None
        if record:
            with self.lock:
                self.records.append(write)
        return write, result

    def resolve(self, bookkeeping: Any | None, timeout: float = 30.0) -> int:
        """Fill ``applied`` for every recorded write; wait up to ``timeout`` for a worker.
        Returns how many writes never saw their invalidation applied."""
        deadline = time.time() + timeout
        while True:
            applied = dict(self.applied_local)
            if bookkeeping is not None:
                applied.update(applied_times(bookkeeping))
            missing = 0
            for write in self.records:
                if write.events:
                    times = [applied.get(i) for i in write.events]
                    write.applied = None if None in times else max(t for t in times if t)
                    missing += write.applied is None
            if not missing or bookkeeping is None or time.time() > deadline:
                return missing
            time.sleep(0.05)

    def reset(self) -> None:
        with self.lock:
            self.records = []
            self.applied_local = {}


def applied_times(bookkeeping: Any) -> dict[str, float]:
    found: dict[str, float] = {}
    for raw in bookkeeping.lrange(APPLIED, 0, -1):
        at, *ids = json.loads(raw)
        for i in ids:
            found[i] = at
    return found
