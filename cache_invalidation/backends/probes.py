"""Health probes of a Redis server: PING on a one-off connection, eviction settings from INFO.

Used by :meth:`.redis.RedisTagBackend.probe` (``cache_invalidation_status``, the dashboard and
the system checks). A probe never waits longer than its timeout and never retries: a slow or
dead server is reported, not hidden.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

EVICTING_POLICIES = frozenset(
    {
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    }
)
"""Every ``maxmemory-policy`` but ``noeviction``: every key the app writes has a TTL, so the
``volatile-*`` policies may evict the tag index as surely as the ``allkeys-*`` ones."""

_PROBE_KWARGS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "client_name",
    "protocol",
    "credential_provider",
)


def eviction_from_info(memory: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """``{"readable": True, "policy", "maxmemory", "evicted_keys", "evicts"}`` from the
    ``INFO memory`` and ``INFO stats`` sections of one server."""
    policy = str(memory.get("maxmemory_policy", "")) or None
    maxmemory = int(memory.get("maxmemory") or 0)
    return {
        "readable": policy is not None,
        "policy": policy,
        "maxmemory": maxmemory,
        "evicted_keys": int(stats.get("evicted_keys") or 0),
        "evicts": policy in EVICTING_POLICIES and maxmemory > 0,
        "error": None if policy is not None else "INFO memory has no maxmemory_policy",
    }


def unreadable(exc: BaseException) -> dict[str, Any]:
    """The eviction answer when the server could not be asked."""
    return {
        "readable": False,
        "policy": None,
        "maxmemory": None,
        "evicted_keys": None,
        "evicts": False,
        "error": f"{type(exc).__name__}: {exc}",
    }


def ping(client: Any, timeout: float) -> tuple[str | None, dict[str, Any]]:
    """PING the server of ``client`` through a one-off connection; returns its version and
    its eviction settings (:func:`eviction_from_info`) where ``INFO`` is allowed. Raises if
    the server does not answer."""
    pool = client.connection_pool
    if type(pool) is not redis.ConnectionPool:  # sentinel and friends: use their own client
        client.ping()
        return None, _read_eviction(client)
    kwargs = {
        k: v for k, v in pool.connection_kwargs.items() if k in _PROBE_KWARGS or k.startswith("ssl")
    }
    probe_pool = redis.ConnectionPool(
        connection_class=pool.connection_class,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )
    probe = redis.Redis(connection_pool=probe_pool)
    try:
        probe.ping()
        try:
            version: str | None = str(probe.info("server").get("redis_version"))
        except redis.RedisError:  # INFO may be denied by an ACL; PING answered
            version = None
        return version, _read_eviction(probe)
    finally:
        probe_pool.disconnect()


def _read_eviction(client: Any) -> dict[str, Any]:
    try:
        return eviction_from_info(client.info("memory"), client.info("stats"))
    except (redis.RedisError, ValueError, TypeError) as exc:  # denied by an ACL, a proxy
        return unreadable(exc)
