"""The numbers on the admin page, arranged for its template.

The source of truth is :func:`cache_invalidation.health.status` (reachability of the cache, the
broker and the database, dead letters, outbox backlog, tag-index size, and
:func:`cache_invalidation.metrics.snapshot`: events per model and invalidation lag). This module
only picks what the page shows and tolerates whatever is missing, so the page renders (saying
"not available" and why) even when a probe or a module fails.

The tag index is measured only when asked (``scan_index``): it reads every tag set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .health import status
from .metrics import snapshot

logger = logging.getLogger("cache_invalidation")

#: Counters shown per model and window (``metrics.NAMES`` has more).
COUNTERS = ("published", "applied", "failed", "dead_lettered")
COMPONENTS = ("cache", "broker", "database")
INDEX_FIELDS = ("tag_sets", "members", "dead_members", "scan_ms")


def _call(func: Callable[[], Any], what: str) -> tuple[Any, str]:
    """(result, "") or (None, why not): a probe failing must not take the page down."""
    try:
        return func(), ""
    except Exception as exc:
        logger.warning("cache_invalidation: %s failed: %s", what, exc)
        return None, f"{what} failed: {type(exc).__name__}: {exc}"


def _status(scan_index: bool) -> tuple[Mapping[str, Any], str]:
    found, problem = _call(lambda: status(include_index=scan_index), "health.status()")
    return (found if isinstance(found, Mapping) else {}), problem


def _snapshot(status: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    found = status.get("metrics")
    if isinstance(found, Mapping):
        return found, ""
    found, problem = _call(snapshot, "metrics.snapshot()")
    return (found if isinstance(found, Mapping) else {}), problem


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _component(name: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        return {"name": name, "state": "unknown", "detail": "not reported", "latency_ms": None}
    state = "unused" if raw.get("used") is False else "ok" if raw.get("ok") else "down"
    return {
        "name": name,
        "state": state,
        "detail": str(raw.get("detail") or ""),
        "latency_ms": raw.get("latency_ms"),
    }


def _window(counts: Any) -> dict[str, Any]:
    counts = counts if isinstance(counts, Mapping) else {}
    return {name: counts.get(name) for name in COUNTERS}


def _lag(raw: Any, window: str) -> dict[str, Any]:
    raw = raw if isinstance(raw, Mapping) else {}
    return {"window": window, **{k: raw.get(k) for k in ("p50", "p95", "p99", "samples")}}


def context(*, scan_index: bool = False, recent: int = 50) -> dict[str, Any]:
    """Everything the dashboard shows, ready for the template. Never raises for a probe."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    status, status_problem = _status(scan_index)
    snapshot, metrics_problem = _snapshot(status)
    per_model = snapshot.get("per_model")
    per_model = per_model if isinstance(per_model, Mapping) else {}
    models = [
        {
            "model": label,
            "hour": _window((per_model[label] or {}).get("hour")),
            "day": _window((per_model[label] or {}).get("day")),
        }
        for label in sorted(per_model)
    ]
    totals = _mapping(snapshot.get("totals"))
    if not snapshot.get("available", bool(snapshot)):
        metrics_problem = metrics_problem or str(snapshot.get("error") or "not available")
    dead, outbox, index = (_mapping(status.get(k)) for k in ("dead_letters", "outbox", "index"))
    changes = _mapping(status.get("changes"))
    local = _mapping(status.get("local"))
    return {
        "available": bool(status),
        "problem": status_problem,
        "healthy": status.get("healthy"),
        "problems": list(status.get("problems") or []),
        "warnings": list(status.get("warnings") or []),
        "components": [_component(name, status.get(name)) for name in COMPONENTS],
        "dlq_pending": dead.get("pending"),
        "dlq_oldest_age": dead.get("oldest_age"),
        "outbox_used": outbox.get("used"),
        "outbox_rows": outbox.get("rows"),
        "outbox_oldest_age": outbox.get("oldest_age"),
        "changes_used": bool(changes.get("used")),
        "changes_lag_bytes": changes.get("lag_bytes"),
        "changes_lag_seconds": changes.get("lag_seconds"),
        "changes_heartbeat_age": changes.get("heartbeat_age"),
        "local_used": bool(local.get("used")),
        "local_subscribers": local.get("subscribers"),
        "local_hit_rate": local.get("hit_rate"),
        "local_flushes": sorted(_mapping(local.get("flushes")).items()),
        "local_error": local.get("error") or "",
        "index_scanned": bool(index.get("scanned")),
        "index": [(name, index.get(name)) for name in INDEX_FIELDS if name in index],
        "index_error": index.get("error") or "",
        "metrics_problem": metrics_problem,
        "models": models,
        "totals": {"hour": _window(totals.get("hour")), "day": _window(totals.get("day"))}
        if totals
        else None,
        "lag": [_lag(snapshot.get("lag_ms"), "hour"), _lag(snapshot.get("lag_ms_day"), "day")]
        if snapshot
        else [],
        "recent": list(ManualInvalidation.objects.all()[:recent]),
    }
