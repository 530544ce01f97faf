"""Is invalidation working? Probes of the cache, the broker and the database, and one status.

:func:`status` is what ``manage.py cache_invalidation_status``, the admin dashboard and the
Prometheus view show. Every probe answers within about :data:`TIMEOUT` seconds and never
raises: a failure is an answer (``{"ok": False, "detail": "ConnectionError: ..."}``).

Rules of :func:`healthy` (see :func:`problems` for the messages): unhealthy when the cache,
the database or (with ``TRANSPORT = "celery"``) the broker does not answer; when more than
``STATUS_MAX_DLQ`` dead letters are pending (default 0: any pending dead letter means entries
may be stale until it is replayed); when the oldest outbox row waits longer than
``STATUS_MAX_OUTBOX_AGE`` seconds (default 300: the relay is not running or cannot deliver);
when the cache's Redis may evict keys (``maxmemory`` set with any ``maxmemory-policy`` but
``noeviction``: ``allkeys-*`` evicts any key, and ``volatile-*`` any key with a TTL, which is
every key the app writes), because an evicted tag set leaves its entries cached while their
invalidations report success; with change data capture watched (``STATUS_MAX_SLOT_LAG`` or
``STATUS_MAX_CHANGES_AGE`` set), when ``wal_level`` is not ``logical``, the slot is missing, it
is more than ``STATUS_MAX_SLOT_LAG`` bytes behind, or ``consume_changes`` finished no round
within ``STATUS_MAX_CHANGES_AGE`` seconds. Failed attempts and lag do not make it unhealthy:
retries absorb blips, and what retries cannot absorb ends in the dead-letter queue.

:func:`warnings` (shown, exit status unchanged): Redis has evicted keys since it started
(``evicted_keys``: entries may have lost their tag sets and stay stale until their TTL), or its
policy evicts but ``maxmemory`` is 0 (nothing is evicted until a limit is set).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from typing import Any

import django
import redis
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Count, Min
from django.utils import timezone

from . import __version__, localcache, metrics, outbox, replication
from .backends import backend_for

# Re-exported: the eviction rules are documented under this module.
from .backends.probes import EVICTING_POLICIES as EVICTING_POLICIES
from .backends.probes import eviction_from_info as eviction_from_info
from .backends.probes import unreadable
from .backends.redis import RedisTagBackend
from .conf import get_config
from .consumer import last_heartbeat
from .logfields import log_extra
from .tagging import TaggedCache

logger = logging.getLogger("cache_invalidation")

#: Seconds a probe may take before it counts as down.
TIMEOUT = 2.0

CACHE_DOWN = "the cache {alias!r} does not answer: {detail}"
BROKER_DOWN = "the Celery broker does not answer: {detail}"
DATABASE_DOWN = "the database {alias!r} does not answer: {detail}"
DLQ_PENDING = (
    "{pending} dead letter(s) pending (STATUS_MAX_DLQ is {limit}); replay them "
    "with manage.py replay_dead_letters"
)
CACHE_EVICTS = (
    "the cache {alias!r} evicts keys when full (maxmemory-policy {policy}, maxmemory "
    "{maxmemory} bytes): an evicted tag set leaves its entries cached while invalidations "
    "report success; set maxmemory-policy to noeviction (and size maxmemory for MAX_TTL)"
)
CACHE_EVICTED = (
    "the cache {alias!r} has evicted {evicted} key(s) since Redis started (evicted_keys): "
    "entries whose tag sets were evicted stay stale until their TTL"
)
CACHE_WOULD_EVICT = (
    "the cache {alias!r} has maxmemory-policy {policy}: nothing is evicted while maxmemory is 0, "
    "but the tag index will be once a limit is set; use noeviction"
)
OUTBOX_STUCK = (
    "the oldest outbox row has waited {age:.0f} s (STATUS_MAX_OUTBOX_AGE is "
    "{limit}); is manage.py relay_outbox running?"
)


CHANGES_WAL_LEVEL = (
    "wal_level is {level!r} on database {alias!r}; manage.py consume_changes needs 'logical'"
)
CHANGES_NO_SLOT = (
    "the replication slot {slot!r} does not exist on database {alias!r}; run manage.py "
    "consume_changes --setup, and flush the cache if it existed before"
)
CHANGES_SLOT_LAG = (
    "the replication slot {slot!r} is {lag} byte(s) behind (STATUS_MAX_SLOT_LAG is {limit}); "
    "is manage.py consume_changes running?"
)
CHANGES_STALE = (
    "manage.py consume_changes finished no round for {age} (STATUS_MAX_CHANGES_AGE is {limit})"
)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def check_cache(timeout: float = TIMEOUT) -> dict[str, Any]:
    """Ping the invalidation cache (``CACHE_ALIAS``).

    django-redis: ``PING`` (and ``INFO server`` for the version) on a connection of its own
    with ``timeout`` and no retries, so a hung Redis answers "down" within ``timeout``. Other
    backends: set, read back and delete a probe key (their own timeouts apply).
    Returns ``{"ok", "detail", "latency_ms", "alias", "backend", "server_version",
    "eviction"}``; ``eviction`` is :func:`eviction`'s answer for django-redis (``INFO memory``
    and ``INFO stats``), ``None`` for other backends.
    """

    alias = str(get_config()["CACHE_ALIAS"])
    result: dict[str, Any] = {
        "alias": alias,
        "backend": "",
        "server_version": None,
        "eviction": None,
    }
    started = time.monotonic()
    try:
        cache = caches[alias]
        result["backend"] = f"{type(cache).__module__}.{type(cache).__name__}"
        answer = backend_for(alias).probe(timeout)
        result["server_version"] = answer.get("server_version")
        result["eviction"] = answer.get("eviction")
        detail = str(answer["detail"])
    except Exception as exc:
        return {**result, "ok": False, "detail": _error(exc), "latency_ms": _ms(started)}
    return {**result, "ok": True, "detail": detail, "latency_ms": _ms(started)}


def redis_eviction(alias: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """:func:`eviction_from_info` for the django-redis cache ``alias``; None for another
    backend. Never raises: an unreachable server is ``{"readable": False, "error": ...}``."""

    try:
        backend = backend_for(alias)
        if not isinstance(backend, RedisTagBackend):
            return None
        return backend.probe(timeout)["eviction"]
    except Exception as exc:
        return unreadable(exc)


def check_broker(timeout: float = TIMEOUT) -> dict[str, Any]:
    """Connect to the Celery broker once (no retries), when ``TRANSPORT`` is ``"celery"``.

    Returns ``{"ok", "used", "detail", "latency_ms", "url"}`` (the URL without password);
    with another transport ``{"ok": True, "used": False, "detail": "not used (...)"}``.
    """

    transport = get_config()["TRANSPORT"]
    if transport != "celery":
        return {
            "ok": True,
            "used": False,
            "url": None,
            "latency_ms": None,
            "detail": f"not used (TRANSPORT is {transport!r})",
        }
    from celery import current_app  # noqa: PLC0415 - optional dependency

    started = time.monotonic()
    url = None
    try:
        with current_app.connection_for_write(connect_timeout=timeout) as connection:
            url = connection.as_uri()
            connection.ensure_connection(max_retries=0, timeout=max(1, round(timeout)))
    except Exception as exc:
        return {
            "ok": False,
            "used": True,
            "url": url,
            "detail": _error(exc),
            "latency_ms": _ms(started),
        }
    return {"ok": True, "used": True, "url": url, "detail": "connected", "latency_ms": _ms(started)}


def check_database(using: str | None = None) -> dict[str, Any]:
    """``SELECT 1`` on the database holding the dead letters (``using`` overrides).
    Returns ``{"ok", "detail", "latency_ms", "alias", "vendor"}``."""

    alias = using or _dead_letter_db()
    started = time.monotonic()
    try:
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return {
            "ok": False,
            "alias": alias,
            "vendor": None,
            "detail": _error(exc),
            "latency_ms": _ms(started),
        }
    return {
        "ok": True,
        "alias": alias,
        "vendor": connection.vendor,
        "detail": "SELECT 1",
        "latency_ms": _ms(started),
    }


def _dead_letter_db() -> str:
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    return str(router.db_for_read(DeadLetter))


def dead_letters(using: str | None = None) -> dict[str, Any]:
    """Pending dead letters: ``{"pending", "oldest_age" (s or None), "by_reason", "error"}``."""

    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    try:
        rows = DeadLetter.objects.using(using or _dead_letter_db()).filter(
            status=DeadLetter.Status.PENDING
        )
        by_reason = {
            r["reason"]: r["n"] for r in rows.order_by().values("reason").annotate(n=Count("pk"))
        }
        oldest = rows.aggregate(oldest=Min("first_failed_at"))["oldest"]
    except Exception as exc:
        return {"pending": None, "oldest_age": None, "by_reason": {}, "error": _error(exc)}
    return {
        "pending": sum(by_reason.values()),
        "oldest_age": (timezone.now() - oldest).total_seconds() if oldest else None,
        "by_reason": dict(sorted(by_reason.items())),
        "error": None,
    }


def outbox_backlog(using: str | None = None) -> dict[str, Any]:
    """The outbox: ``{"used", "rows", "oldest_age" (s or None), "error"}``."""

    used = get_config()["TRANSPORT"] == "outbox"
    try:
        return {"used": used, **outbox.backlog(using or DEFAULT_DB_ALIAS), "error": None}
    except Exception as exc:
        return {"used": used, "rows": None, "oldest_age": None, "error": _error(exc)}


def changes() -> dict[str, Any]:
    """Change data capture (``manage.py consume_changes``), looked at only when
    ``STATUS_MAX_SLOT_LAG`` or ``STATUS_MAX_CHANGES_AGE`` is set: ``{"used", "alias", "slot",
    "wal_level", "slot_exists", "lag_bytes", "wal_status", "heartbeat_age", "lag_seconds",
    "error"}``. ``lag_seconds`` is how far behind the last round was (commit of the oldest
    transaction it published -> its end) plus the time since it ended."""

    config = get_config()
    used = config["STATUS_MAX_SLOT_LAG"] is not None or config["STATUS_MAX_CHANGES_AGE"] is not None
    result: dict[str, Any] = {
        "used": used,
        "alias": config["CHANGES_DATABASE"],
        "slot": config["CHANGES_SLOT"],
        "wal_level": None,
        "slot_exists": None,
        "lag_bytes": None,
        "wal_status": None,
        "heartbeat_age": None,
        "lag_seconds": None,
        "error": None,
    }
    if not used:
        return result
    try:
        beat = last_heartbeat(str(result["slot"]))
        if beat is not None:
            age = max(0.0, time.time() - float(beat["at"]))
            result["heartbeat_age"] = round(age, 3)
            result["lag_seconds"] = round(age + float(beat.get("lag_seconds") or 0), 3)
        connection = connections[result["alias"]]
        result["wal_level"] = replication.setting(connection, "wal_level")
        info = replication.slot_info(connection, str(result["slot"]))
        result["slot_exists"] = info is not None
        if info is not None:
            result["lag_bytes"] = int(info["lag_bytes"])
            result["wal_status"] = info["wal_status"]
    except Exception as exc:
        result["error"] = _error(exc)
    return result


def local_cache() -> dict[str, Any]:
    """The local caches (L1) of every process: subscribers now, and the shared counts.

    ``{"used": False}`` when ``LOCAL_CACHE`` is off; else ``{"used": True, "subscribers": n,
    "hits": n, "misses": n, "hit_rate": 0.93 | None, "flushes": {cause: n}, "counts": {...},
    "error": None}`` (``subscribers`` is ``PUBSUB NUMSUB`` of the announcement channel: one
    per live process; the counts are written by each process every few seconds).
    """
    if get_config().get("LOCAL_CACHE") is None:
        return {"used": False}
    found: dict[str, Any] = {"used": True, "subscribers": None, "error": None}
    try:
        backend: Any = backend_for(str(get_config()["CACHE_ALIAS"]))
        found["subscribers"] = backend.subscribers()
        counts = backend.read_counts(localcache.STATS_KEY)
    except Exception as exc:  # a status never raises
        found["error"] = _error(exc)
        counts = {}
    hits, misses = counts.get("hit", 0), counts.get("miss", 0) + counts.get("bypass", 0)
    found.update(
        hits=hits,
        misses=misses,
        hit_rate=round(hits / (hits + misses), 4) if hits + misses else None,
        flushes={
            cause: counts["flush:" + cause]
            for cause in localcache.CAUSES
            if counts.get("flush:" + cause)
        },
        counts=counts,
    )
    return found


def index(scan: bool = False) -> dict[str, Any]:
    """Tag-index size (``TaggedCache().index_stats()``) when ``scan``; the scan reads every tag
    set, so it is skipped unless asked for: ``{"scanned": False}``."""
    if not scan:
        return {"scanned": False}

    started = time.monotonic()
    try:
        stats = TaggedCache().index_stats()
    except Exception as exc:
        return {"scanned": False, "error": _error(exc)}
    return {"scanned": True, **stats, "scan_ms": _ms(started)}


def versions() -> dict[str, str | None]:
    try:
        import django_redis  # noqa: PLC0415 - optional dependency

        django_redis_version: str | None = str(django_redis.__version__)
    except ImportError:  # pragma: no cover - a declared dependency
        django_redis_version = None
    return {
        "cache_invalidation": __version__,
        "python": platform.python_version(),
        "django": django.get_version(),
        "celery": importlib.metadata.version("celery"),
        "kombu": importlib.metadata.version("kombu"),
        "redis_py": str(redis.__version__),
        "django_redis": django_redis_version,
    }


def status(*, include_index: bool = False, using: str | None = None) -> dict[str, Any]:
    """Everything an operator asks first, in one dict (JSON-serialisable). Never raises.

    ::

        {
          "healthy": True, "problems": [],           # see healthy() / problems()
          "warnings": [],                            # see warnings(): shown, not unhealthy
          "generated_at": 1764237000.0,
          "transport": "celery", "cache_alias": "default",
          "cache": {"ok": True, "detail": ..., "latency_ms": 0.4, "server_version": "7.2.4",
                    "eviction": {"readable": True, "policy": "noeviction", "maxmemory": 0,
                                 "evicted_keys": 0, "evicts": False, "error": None}, ...},
          "broker": {"ok": True, "used": True, "detail": ..., "url": ..., ...},
          "database": {"ok": True, "alias": "default", "vendor": "postgresql", ...},
          "dead_letters": {"pending": 0, "oldest_age": None, "by_reason": {}, "error": None},
          "outbox": {"used": False, "rows": 0, "oldest_age": None, "error": None},
          "changes": {"used": False, ...} | {"used": True, "lag_bytes": n, ...},  # changes()
          "local": {"used": False} | {"used": True, "subscribers": n, ...},  # local_cache()
          "index": {"scanned": False} | {"scanned": True, "tag_sets": n, "members": n, ...},
          "metrics": metrics.snapshot(),
          "limits": {"STATUS_MAX_DLQ": 0, "STATUS_MAX_OUTBOX_AGE": 300, ...},
          "versions": {"cache_invalidation": "0.1.0", "django": ..., ...},
        }

    ``include_index`` scans the tag index (slow on a large index); ``using`` names the
    database of the dead letters and the outbox (default: where the router puts them).
    """

    config = get_config()
    cache = check_cache()
    result: dict[str, Any] = {
        "healthy": True,
        "problems": [],
        "generated_at": time.time(),
        "transport": config["TRANSPORT"],
        "cache_alias": config["CACHE_ALIAS"],
        "cache": cache,
        "broker": check_broker(),
        "database": check_database(using),
        "dead_letters": dead_letters(using),
        "outbox": outbox_backlog(using),
        "changes": changes(),
        "local": local_cache()
        if cache["ok"]
        else {"used": get_config().get("LOCAL_CACHE") is not None, "error": "not read"},
        # Without the cache, the scan and the snapshot would each wait for their own timeouts.
        "index": index(include_index and cache["ok"]),
        "metrics": metrics.snapshot()
        if cache["ok"]
        else metrics.unavailable("not read: the cache does not answer"),
        "limits": {
            "STATUS_MAX_DLQ": config["STATUS_MAX_DLQ"],
            "STATUS_MAX_OUTBOX_AGE": config["STATUS_MAX_OUTBOX_AGE"],
            "STATUS_MAX_SLOT_LAG": config["STATUS_MAX_SLOT_LAG"],
            "STATUS_MAX_CHANGES_AGE": config["STATUS_MAX_CHANGES_AGE"],
        },
        "versions": versions(),
    }
    found = problems(result)
    result["problems"] = found
    result["healthy"] = not found
    result["warnings"] = warnings(result)
    if found:
        logger.debug(
            "cache_invalidation: unhealthy: %s", "; ".join(found), extra=log_extra(stage="status")
        )
    return result


def problems(status: dict[str, Any]) -> list[str]:
    """Why ``status`` is unhealthy (empty when healthy), one sentence each."""

    limits = status.get("limits") or {}
    config = get_config()
    max_dlq = int(limits.get("STATUS_MAX_DLQ", config["STATUS_MAX_DLQ"]))
    max_age = float(limits.get("STATUS_MAX_OUTBOX_AGE", config["STATUS_MAX_OUTBOX_AGE"]))
    found = []
    cache = status.get("cache") or {}
    if not cache.get("ok"):
        found.append(
            CACHE_DOWN.format(
                alias=cache.get("alias", status.get("cache_alias")),
                detail=cache.get("detail", "not checked"),
            )
        )
    broker = status.get("broker") or {}
    if broker.get("used") and not broker.get("ok"):
        found.append(BROKER_DOWN.format(detail=broker.get("detail", "not checked")))
    database = status.get("database") or {}
    if not database.get("ok"):
        found.append(
            DATABASE_DOWN.format(
                alias=database.get("alias"), detail=database.get("detail", "not checked")
            )
        )
    eviction = cache.get("eviction") or {}
    if cache.get("ok") and eviction.get("evicts"):
        found.append(
            CACHE_EVICTS.format(
                alias=cache.get("alias", status.get("cache_alias")),
                policy=eviction.get("policy"),
                maxmemory=eviction.get("maxmemory"),
            )
        )
    pending = (status.get("dead_letters") or {}).get("pending")
    if pending is not None and pending > max_dlq:
        found.append(DLQ_PENDING.format(pending=pending, limit=max_dlq))
    age = (status.get("outbox") or {}).get("oldest_age")
    if age is not None and age > max_age:
        found.append(
            OUTBOX_STUCK.format(
                age=age, limit=limits.get("STATUS_MAX_OUTBOX_AGE", config["STATUS_MAX_OUTBOX_AGE"])
            )
        )
    found.extend(_changes_problems(status.get("changes") or {}, limits, config))
    return found


def _changes_problems(
    changes: dict[str, Any], limits: dict[str, Any], config: dict[str, Any]
) -> list[str]:
    if not changes.get("used"):
        return []
    alias, slot = changes.get("alias"), changes.get("slot")
    if changes.get("error"):
        return [f"change data capture could not be checked: {changes['error']}"]
    if changes.get("wal_level") != "logical":
        return [CHANGES_WAL_LEVEL.format(level=changes.get("wal_level"), alias=alias)]
    if not changes.get("slot_exists"):
        return [CHANGES_NO_SLOT.format(slot=slot, alias=alias)]
    found = []
    max_lag = limits.get("STATUS_MAX_SLOT_LAG", config["STATUS_MAX_SLOT_LAG"])
    lag = changes.get("lag_bytes")
    if max_lag is not None and lag is not None and lag > max_lag:
        found.append(CHANGES_SLOT_LAG.format(slot=slot, lag=lag, limit=max_lag))
    max_age = limits.get("STATUS_MAX_CHANGES_AGE", config["STATUS_MAX_CHANGES_AGE"])
    age = changes.get("heartbeat_age")
    if max_age is not None and (age is None or age > max_age):
        shown = "as long as MAX_TTL remembers" if age is None else f"{age:.0f} s"
        found.append(CHANGES_STALE.format(age=shown, limit=max_age))
    return found


def warnings(status: dict[str, Any]) -> list[str]:
    """What an operator should know that does not make ``status`` unhealthy, one sentence each."""
    cache = status.get("cache") or {}
    eviction = cache.get("eviction") or {}
    alias = cache.get("alias", status.get("cache_alias"))
    found = []
    if eviction.get("evicted_keys"):
        found.append(CACHE_EVICTED.format(alias=alias, evicted=eviction["evicted_keys"]))
    if eviction.get("policy") in EVICTING_POLICIES and not eviction.get("evicts"):
        found.append(CACHE_WOULD_EVICT.format(alias=alias, policy=eviction["policy"]))
    return found


def healthy(status: dict[str, Any]) -> bool:
    """True when :func:`problems` finds nothing in ``status`` (see the module's rules)."""
    return not problems(status)
