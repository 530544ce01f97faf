"""The shared metrics store: event counters per model, and the invalidation lag.

Kept in the invalidation cache (``CACHE_ALIAS``), so every process (web, worker, relay) adds
to the same numbers and any of them can read them (``manage.py cache_invalidation_status``, the
admin dashboard, the Prometheus view).

**Counters**, each counting *events* per model (``event.entity_type`` of a declared model;
``"manual"`` for :func:`~cache_invalidation.invalidate` events, ``"unknown"`` for a message too
malformed to decode or naming no declared model, so the labels stay bounded): ``published``
(left this process: sent to the broker, applied inline, delivered from the outbox),
``applied`` (each application; replays count again), ``failed`` (failed attempts: an event
retried three times counts three), ``dead_lettered``, ``duplicates``
(skipped because their id was already applied) and ``escalated`` (storm control). **Lag**:
seconds from ``event.timestamp`` (made, before commit) to applied, in a histogram with fixed
bounds (:data:`LAG_BOUNDS_MS`).

Layout on django-redis (names through the cache's ``make_key``): one hash per minute
``ci:stats:min:<minute>`` (kept 2 hours), one per hour ``ci:stats:hour:<hour>`` (kept 26
hours) and one running total ``ci:stats:total`` (kept 7 days after its last write; the
Prometheus counters come from it). Fields are ``"<model>|<counter>"``, ``"~lag|<bucket
index>"`` and ``"~lag|sum"`` (milliseconds). Counts are aggregated in the process and written
together, with a later invalidation's own script call or by a timer, at most
``METRICS_FLUSH_INTERVAL`` seconds after they happened, each in the bucket of its own minute
(:mod:`.metricstore`, which also says what a crash loses). Reading flushes this process's
aggregate first, then is one pipelined round trip of 84 ``HGETALL``.

On any other cache backend the store is best effort: one key per field and bucket, bumped with
``cache.add`` + ``cache.incr`` (several calls per batch, not atomic together), read with
``get_many`` for the labels of the declared models plus ``"manual"`` and ``"unknown"``.

Counting never breaks the work it counts: every failure is caught and logged at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from . import metricstore
from .backends import backend_for
from .bookkeeping import Bookkeeping
from .conf import get_config
from .events import InvalidationEvent
from .logfields import log_extra
from .metricstore import HOUR, MINUTE, PREFIX, TTL_HOUR, TTL_MINUTE, TTL_TOTAL
from .registry import registry

logger = logging.getLogger("cache_invalidation")

#: The counters, in display order.
NAMES = ("published", "applied", "failed", "dead_lettered", "duplicates", "escalated")
#: Upper bounds (milliseconds) of the lag histogram's buckets; one more bucket is ``+Inf``.
LAG_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)

MANUAL = "manual"
UNKNOWN = "unknown"
HOUR_BUCKETS, DAY_BUCKETS = 60, 24  # minute buckets in "hour", hour buckets in "day"
LAG = "~lag"


def label(event: InvalidationEvent | None) -> str:
    """The model label an event is counted under: its model when declared, ``"manual"`` for
    an event of no model, ``"unknown"`` otherwise (an event's ``entity_type`` comes from a
    message, so the set of labels must stay the declared models': bounded)."""
    if event is None:
        return UNKNOWN
    if not event.entity_type:
        return MANUAL
    return event.entity_type if event.entity_type in declared_labels() else UNKNOWN


_declared: tuple[int, frozenset[str]] = (-1, frozenset())


def declared_labels() -> frozenset[str]:
    """The labels of the declared models (recomputed when the registry grows)."""
    global _declared

    size = len(registry.policies)
    if _declared[0] != size:
        _declared = (size, frozenset(p.label for p in registry.policies.values()))
    return _declared[1]


def lag_bucket(lag_ms: float) -> int:
    """Index of the histogram bucket holding ``lag_ms`` (``len(LAG_BOUNDS_MS)`` is ``+Inf``)."""
    for index, bound in enumerate(LAG_BOUNDS_MS):
        if lag_ms <= bound:
            return index
    return len(LAG_BOUNDS_MS)


# -- writing ----------------------------------------------------------------------------------


def record_published(events: Sequence[InvalidationEvent], transport: str) -> None:
    """Count a batch that left this process through ``transport``. Never raises."""
    _record(Counter(label(e) for e in events), "published")


def record_applied(
    events: Sequence[InvalidationEvent],
    now: float | None = None,
    *,
    duplicates: Sequence[InvalidationEvent] = (),
) -> None:
    """Count an applied batch and the lag of each of its events, and the ``duplicates`` skipped
    in it, in one write. ``now`` (seconds since the epoch) defaults to the current time.
    Never raises."""
    now = time.time() if now is None else now
    _write(applied_fields(events, now, duplicates), now)


def applied_fields(
    events: Sequence[InvalidationEvent],
    now: float,
    duplicates: Sequence[InvalidationEvent] = (),
    published: bool = False,
) -> Counter[str]:
    """The fields :func:`record_applied` adds (and ``published`` too when the batch is applied
    where it was published: ``sync``)."""
    fields: Counter[str] = Counter()
    for event in events:
        fields[f"{label(event)}|applied"] += 1
        if published:
            fields[f"{label(event)}|published"] += 1
        lag_ms = max(0.0, (now - float(event.timestamp)) * 1000.0)
        fields[f"{LAG}|{lag_bucket(lag_ms)}"] += 1
        fields[f"{LAG}|sum"] += round(lag_ms)
    for event in duplicates:
        fields[f"{label(event)}|duplicates"] += 1
    return fields


def record_failed(events: Sequence[InvalidationEvent], stage: str) -> None:
    """Count a failed attempt of a batch at ``stage`` (``publish``/``apply``/``decode``);
    undecodable batches (no events) count once under ``"unknown"``. Never raises."""
    _record(Counter(label(e) for e in events) or Counter({UNKNOWN: 1}), "failed")


def incr(name: str, amount: int = 1, *, model: str | None = None) -> None:
    """Add ``amount`` to counter ``name`` of ``model`` (``"unknown"`` when not given).
    Never raises."""
    if amount > 0:
        _record(Counter({model or UNKNOWN: amount}), name)


def incr_events(name: str, events: Iterable[Any]) -> None:
    """Add one to counter ``name`` per event, under each event's model; a raw (undecodable)
    payload counts once under ``"unknown"``. Never raises."""
    counts = Counter(label(e) if isinstance(e, InvalidationEvent) else UNKNOWN for e in events)
    _record(counts or Counter({UNKNOWN: 1}), name)


def _record(per_model: Counter[str], name: str) -> None:
    _write(Counter({f"{model}|{name}": n for model, n in per_model.items() if n > 0}))


def bucket_writes(fields: Counter[str], now: float) -> list[tuple[str, int, dict[str, int]]]:
    """``fields`` as increments of the minute, hour and total hashes (for
    :class:`~cache_invalidation.bookkeeping.Bookkeeping`)."""
    if not fields:
        return []
    counts = dict(fields)
    return [
        (f"{PREFIX}min:{int(now // MINUTE)}", TTL_MINUTE, counts),
        (f"{PREFIX}hour:{int(now // HOUR)}", TTL_HOUR, counts),
        (f"{PREFIX}total", TTL_TOTAL, counts),
    ]


def _write(fields: Counter[str], now: float | None = None) -> None:
    """Add ``fields`` to the minute, hour and total buckets: aggregated in the process
    (:mod:`.metricstore`), or at once (one pipeline on django-redis) with
    ``METRICS_FLUSH_INTERVAL = 0``."""

    if not fields:
        return
    now = time.time() if now is None else now
    try:
        alias = get_config()["CACHE_ALIAS"]
        if metricstore.interval() > 0:
            metricstore.add(alias, fields, now)
            return
        backend = backend_for(alias)
    except Exception as exc:  # counting must never break the work it counts
        logger.debug(
            "cache_invalidation: metrics not recorded: %s", exc, extra=log_extra(stage="metrics")
        )
        return
    backend.write_bookkeeping(Bookkeeping(counters=bucket_writes(fields, now)), "metrics")


def flush() -> None:
    """Write this process's unwritten counts now (see :mod:`.metricstore`). Never raises."""
    metricstore.flush()


# -- reading ----------------------------------------------------------------------------------


def read(names: Iterable[str] = NAMES) -> dict[str, int]:
    """Running totals of the counters, summed over models (0 when unknown or unreadable)."""
    names = list(names)
    try:
        [total] = _read_buckets([f"{PREFIX}total"])
    except Exception as exc:
        logger.debug(
            "cache_invalidation: metrics not read: %s", exc, extra=log_extra(stage="metrics")
        )
        total = {}
    counts = _fold([total])
    return {n: sum(c.get(n, 0) for c in counts.values()) for n in names}


def read_totals() -> dict[str, Any]:
    """The running totals (what Prometheus exposes): ``{"per_model": {label: {counter: n}},
    "lag": {"buckets": [n per bucket, +Inf last], "sum_ms": n, "count": n}}``. Raises if the
    store cannot be read."""
    [total] = _read_buckets([f"{PREFIX}total"])
    buckets, sum_ms = _lag([total])
    return {
        "per_model": _fold([total]),
        "lag": {"buckets": buckets, "sum_ms": sum_ms, "count": sum(buckets)},
    }


def snapshot(now: float | None = None) -> dict[str, Any]:
    """Counters and lag for the last hour and the last day. Never raises.

    Shape (every counter of :data:`NAMES` is always present; lag values in milliseconds)::

        {
          "available": True,           # False when the store could not be read (then zeros)
          "error": None,               # or "ConnectionError: ..."
          "window": {"now": 1764237000.0,
                     "hour": {"start": ..., "end": ..., "bucket_seconds": 60, "buckets": 60},
                     "day": {"start": ..., "end": ..., "bucket_seconds": 3600, "buckets": 24}},
          "per_model": {"shop.Product": {"hour": {"published": 3, "applied": 3, ...},
                                         "day": {...}},
                        "manual": {...}},          # models with any count in the last day
          "totals": {"hour": {"published": 3, ...}, "day": {...}},
          "lag_ms": {"p50": 2.4, "p95": 9.1, "p99": 9.8, "mean": 3.0, "samples": 12},  # hour
          "lag_ms_day": {...},                     # the same over the last day
          "lag_histogram": {"bounds_ms": [1, 2, 5, ...], "hour": [n, ...], "day": [n, ...]},
        }

    "Last hour" is the current minute and the 59 before it; "last day" the current hour and the
    23 before it (so up to a minute, respectively an hour, more than the name says).
    Percentiles are estimated from the histogram as Prometheus' ``histogram_quantile`` does:
    find the bucket holding the rank and interpolate linearly inside it (the first bucket starts
    at 0). The error is at most that bucket's width; a rank in the ``+Inf`` bucket reports the
    largest bound (60000). ``None`` when there were no samples.
    """
    return _snapshot(now, read=True)


def unavailable(reason: str, now: float | None = None) -> dict[str, Any]:
    """A :func:`snapshot`-shaped dict of zeros with ``available`` False and ``error`` set to
    ``reason``, without touching the cache (for callers that know it is down)."""
    return _snapshot(now, read=False, error=reason)


def _snapshot(now: float | None, read: bool, error: str | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    minute, hour = int(now // MINUTE), int(now // HOUR)
    minute_keys = [f"{PREFIX}min:{m}" for m in range(minute - HOUR_BUCKETS + 1, minute + 1)]
    hour_keys = [f"{PREFIX}hour:{h}" for h in range(hour - DAY_BUCKETS + 1, hour + 1)]
    found: list[dict[str, int]] = [{} for _ in minute_keys + hour_keys]
    if read:
        try:
            found = _read_buckets(minute_keys + hour_keys)
        except Exception as exc:
            logger.debug(
                "cache_invalidation: metrics not read: %s", exc, extra=log_extra(stage="metrics")
            )
            error = f"{type(exc).__name__}: {exc}"
    hour_hashes, day_hashes = found[: len(minute_keys)], found[len(minute_keys) :]
    per_hour, per_day = _fold(hour_hashes), _fold(day_hashes)
    models = sorted(set(per_hour) | set(per_day))
    per_model = {
        m: {"hour": _counts(per_hour.get(m, {})), "day": _counts(per_day.get(m, {}))}
        for m in models
    }
    totals = {
        window: {n: sum(per_model[m][window][n] for m in models) for n in NAMES}
        for window in ("hour", "day")
    }
    lag_hour, sum_hour = _lag(hour_hashes)
    lag_day, sum_day = _lag(day_hashes)
    return {
        "available": error is None,
        "error": error,
        "window": {
            "now": now,
            "hour": {
                "start": (minute - HOUR_BUCKETS + 1) * MINUTE,
                "end": now,
                "bucket_seconds": MINUTE,
                "buckets": HOUR_BUCKETS,
            },
            "day": {
                "start": (hour - DAY_BUCKETS + 1) * HOUR,
                "end": now,
                "bucket_seconds": HOUR,
                "buckets": DAY_BUCKETS,
            },
        },
        "per_model": per_model,
        "totals": totals,
        "lag_ms": lag_summary(lag_hour, sum_hour),
        "lag_ms_day": lag_summary(lag_day, sum_day),
        "lag_histogram": {"bounds_ms": list(LAG_BOUNDS_MS), "hour": lag_hour, "day": lag_day},
    }


def lag_summary(buckets: Sequence[int], sum_ms: int = 0) -> dict[str, Any]:
    """p50/p95/p99 (estimated, see :func:`snapshot`), mean and sample count of a histogram."""
    samples = sum(buckets)
    return {
        "p50": percentile(buckets, 0.50),
        "p95": percentile(buckets, 0.95),
        "p99": percentile(buckets, 0.99),
        "mean": round(sum_ms / samples, 1) if samples else None,
        "samples": samples,
    }


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """Estimate the ``q`` quantile (0..1) in ms from per-bucket counts (``+Inf`` last)."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(LAG_BOUNDS_MS):
                return float(LAG_BOUNDS_MS[-1])
            lower = 0.0 if index == 0 else float(LAG_BOUNDS_MS[index - 1])
            upper = float(LAG_BOUNDS_MS[index])
            return round(lower + (upper - lower) * (rank - seen) / count, 1)
        seen += count
    return float(LAG_BOUNDS_MS[-1])  # pragma: no cover - rank <= total always lands above


def _counts(found: dict[str, int]) -> dict[str, int]:
    return {n: int(found.get(n, 0)) for n in NAMES}


def _fold(hashes: Iterable[dict[str, int]]) -> dict[str, dict[str, int]]:
    """Sum ``"<model>|<counter>"`` fields of several buckets into {model: {counter: n}}."""
    out: dict[str, dict[str, int]] = {}
    known = declared_labels() | {MANUAL, UNKNOWN}
    for found in hashes:
        for field, value in found.items():
            model, _, name = field.rpartition("|")
            if not model or model == LAG:
                continue
            if model not in known:  # written before labels were bounded, or by a foreign app
                model = UNKNOWN
            counts = out.setdefault(model, {})
            counts[name] = counts.get(name, 0) + int(value)
    return out


def _lag(hashes: Iterable[dict[str, int]]) -> tuple[list[int], int]:
    buckets = [0] * (len(LAG_BOUNDS_MS) + 1)
    sum_ms = 0
    for found in hashes:
        for field, value in found.items():
            prefix, _, name = field.rpartition("|")
            if prefix != LAG:
                continue
            if name == "sum":
                sum_ms += int(value)
            elif name.isdigit() and int(name) < len(buckets):
                buckets[int(name)] += int(value)
    return buckets, sum_ms


def _read_buckets(names: list[str]) -> list[dict[str, int]]:
    """The fields of each bucket, in order (empty when absent), this process's own unwritten
    counts included (they are written first). Raises on cache errors."""

    metricstore.flush()
    return backend_for(get_config()["CACHE_ALIAS"]).read_counters(names, _candidate_fields)


def _candidate_fields() -> list[str]:
    """Every field a non-Redis store may hold: declared models, manual, unknown; the lag."""

    labels = {p.label for p in registry.policies.values()} | {MANUAL, UNKNOWN}
    fields = [f"{m}|{n}" for m in sorted(labels) for n in NAMES]
    fields += [f"{LAG}|{i}" for i in range(len(LAG_BOUNDS_MS) + 1)] + [f"{LAG}|sum"]
    return fields
