"""System checks: broken declarations and settings fail at startup, with ids and hints.

Declarations: ``E001`` not a dict, ``E002`` unknown option, ``E003`` wrong type, ``E004`` a
template names no usable field, ``E005`` a template uses attribute/index access, a positional
placeholder or a format spec, ``E006`` ``on_fields`` names no field.
Settings: ``E010`` ``CACHE_INVALIDATION`` is malformed or has an unknown key or a bad value,
``E011`` ``CACHE_ALIAS`` names no cache, ``E012`` unknown ``TRANSPORT``, ``E013`` retry backoff
not below the Redis broker's visibility timeout, ``E014`` the cache uses django-redis's
``ShardClient``, ``W001`` the cache swallows errors (``IGNORE_EXCEPTIONS``), ``W002`` a
per-process cache with a transport that applies in another process, ``W003`` a ``DummyCache``,
``W004`` plain ``cache.set()`` entries (declared keys) outlive ``MAX_TTL``.
The server: ``W005`` the cache's Redis may evict the tag index (``maxmemory-policy`` other than
``noeviction``), checked only where ``INFO`` answers within half a second at startup.
The local cache: ``E015`` ``LOCAL_CACHE`` is malformed (not a dict, an unknown key, a bad
value), ``E016`` ``LOCAL_CACHE`` is on but the cache cannot announce invalidations (not
django-redis: no Pub/Sub).
Change data capture: see :mod:`.changechecks` (``W010`` to ``W012``).
"""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from . import changechecks, health
from .conf import DEFAULTS, TRANSPORTS, celery_broker_configured, get_config
from .registry import registry


def register() -> None:
    checks.register(check_declarations, "cache_invalidation")
    checks.register(check_settings, "cache_invalidation")
    checks.register(check_cache_eviction, "cache_invalidation", checks.Tags.caches)
    changechecks.register()


def check_cache_eviction(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``W005``: the invalidation cache's Redis evicts keys when full, so a tag set can go while
    its entries stay. Reads ``INFO`` on a connection of its own (half a second at most); says
    nothing when the server cannot be asked (down, ``INFO`` denied, not django-redis)."""

    try:
        alias = str(get_config()["CACHE_ALIAS"])
    except Exception:  # a malformed CACHE_INVALIDATION: E010 says so
        return []
    cache = (getattr(settings, "CACHES", {}) or {}).get(alias)
    if not cache or "django_redis" not in str(cache.get("BACKEND", "")):
        return []
    eviction = health.redis_eviction(alias)
    if not eviction or eviction.get("policy") not in health.EVICTING_POLICIES:
        return []
    limit = (
        f"maxmemory is {eviction['maxmemory']} bytes"
        if eviction.get("maxmemory")
        else "maxmemory is 0 for now, so nothing is evicted until a limit is set"
    )
    return [
        checks.Warning(
            f"The cache {alias!r} runs on a Redis whose maxmemory-policy is "
            f"{eviction['policy']!r} ({limit}): Redis may evict a tag set while the entries it "
            "lists stay cached, and invalidating that tag then deletes nothing and reports "
            "success.",
            hint="Set maxmemory-policy to noeviction on this Redis (every key the app writes "
            "has a TTL of at most MAX_TTL, so volatile-* policies evict the tag index too), and "
            "size maxmemory for MAX_TTL's worth of entries. cache_invalidation_status reports "
            "it as unhealthy while it lasts.",
            id="cache_invalidation.W005",
        )
    ]


def check_declarations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    wanted = None if app_configs is None else {c.label for c in app_configs}
    return [
        checks.Error(p.msg, hint=p.hint, obj=p.model, id=p.id)
        for p in registry.problems
        if wanted is None or p.model._meta.app_label in wanted
    ]


_POSITIVE_INTS = (
    "MAX_TTL",
    "RETRY_BACKOFF_MAX",
    "ALERT_AFTER_ATTEMPTS",
    "DEDUP_WINDOW",
    "LEASE_TIMEOUT",
    "CHANGES_BATCH",
    "STALE_TTL",
    "MAX_RELATED_DEPTH",
    "MAX_DELIVERIES",
    "MAX_TAGS_PER_EVENT",
    "RATE_LIMIT_WINDOW",
    "STATUS_MAX_OUTBOX_AGE",
    "MAX_EVENT_BYTES",
)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    user = getattr(settings, "CACHE_INVALIDATION", None)
    if user is None:
        user = {}
    if not isinstance(user, dict):
        return [
            checks.Error(
                f"CACHE_INVALIDATION must be a dict, not {type(user).__name__}.",
                hint="See the settings reference in README.rst.",
                id="cache_invalidation.E010",
            )
        ]
    for key in user:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
            errors.append(
                checks.Error(
                    f"CACHE_INVALIDATION has an unknown key {key!r}.",
                    hint=(f"Did you mean {close[0]!r}? " if close else "")
                    + "Known keys: "
                    + ", ".join(DEFAULTS)
                    + ".",
                    id="cache_invalidation.E010",
                )
            )
    config = {**DEFAULTS, **user}
    for key in _POSITIVE_INTS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            errors.append(
                checks.Error(
                    f"CACHE_INVALIDATION[{key!r}] must be a positive integer, got {value!r}.",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="cache_invalidation.E010",
                )
            )
    for key in ("MAX_RETRIES", "MODEL_RATE_LIMIT", "STATUS_MAX_DLQ"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(
                checks.Error(
                    f"CACHE_INVALIDATION[{key!r}] must be an integer >= 0, got {value!r}.",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="cache_invalidation.E010",
                )
            )
    for key in ("RETRY_BACKOFF", "LEASE_WAIT"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            errors.append(
                checks.Error(
                    f"CACHE_INVALIDATION[{key!r}] must be a number of seconds >= 0, got {value!r}.",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="cache_invalidation.E010",
                )
            )
    token = config["METRICS_TOKEN"]
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        errors.append(
            checks.Error(
                "CACHE_INVALIDATION['METRICS_TOKEN'] must be None or a string of at least 16 "
                "characters.",
                hint="Generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe())'",
                id="cache_invalidation.E010",
            )
        )
    alias = config["CACHE_ALIAS"]
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        errors.append(
            checks.Error(
                f"CACHE_INVALIDATION['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.",
                hint="Name one of: " + ", ".join(map(repr, caches)) + "."
                if caches
                else "Configure CACHES.",
                id="cache_invalidation.E011",
            )
        )
    else:
        options = caches[alias].get("OPTIONS", {}) or {}
        ignoring = options.get(
            "IGNORE_EXCEPTIONS", getattr(settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False)
        )
        if ignoring and "django_redis" in str(caches[alias].get("BACKEND", "")):
            errors.append(
                checks.Warning(
                    f"The cache {alias!r} sets IGNORE_EXCEPTIONS: plain cache.delete() calls "
                    "on it report success when Redis is down.",
                    hint="cache_invalidation bypasses it for invalidations (they raise and are "
                    "retried), but your own cache.delete() calls do not: remove "
                    "IGNORE_EXCEPTIONS, or never rely on a delete through this cache.",
                    id="cache_invalidation.W001",
                )
            )
        errors.extend(_check_cache_backend(alias, caches[alias], config))
        errors.extend(_check_local_cache(alias, caches[alias], config.get("LOCAL_CACHE")))
    errors.extend(_check_visibility_timeout(config))
    transport = config["TRANSPORT"]
    if transport is not None and transport not in TRANSPORTS:
        errors.append(
            checks.Error(
                f"CACHE_INVALIDATION['TRANSPORT'] is {transport!r}.",
                hint="Choose one of: " + ", ".join(map(repr, TRANSPORTS)) + ", or None to pick "
                "'celery' when a broker is configured and 'sync' otherwise.",
                id="cache_invalidation.E012",
            )
        )
    return errors


def _broker() -> tuple[str, dict[str, Any]]:
    url = getattr(settings, "CELERY_BROKER_URL", None) or ""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None)
    try:
        from celery import current_app  # noqa: PLC0415 - optional dependency

        url = url or current_app.conf.broker_url or ""
        if options is None:
            options = current_app.conf.broker_transport_options
    except Exception:  # pragma: no cover - celery is a dependency
        pass
    return str(url), dict(options or {})


def _check_visibility_timeout(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """A retry countdown longer than the Redis broker's visibility timeout is redelivered to
    another worker while the first still holds it: the task runs twice, and again, in a loop."""

    if config["TRANSPORT"] not in (None, "celery") or not celery_broker_configured():
        return []
    url, options = _broker()
    if url.split("://", 1)[0] not in ("redis", "rediss", "sentinel"):
        return []
    visibility = options.get("visibility_timeout", 3600)
    backoff_max = config["RETRY_BACKOFF_MAX"]
    if not isinstance(backoff_max, (int, float)) or backoff_max < visibility:
        return []
    return [
        checks.Error(
            f"CACHE_INVALIDATION['RETRY_BACKOFF_MAX'] ({backoff_max} s) is not below the Redis "
            f"broker's visibility_timeout ({visibility} s): a retry that waits that long is "
            "delivered again to another worker and runs twice, in a loop.",
            hint="Lower RETRY_BACKOFF_MAX, or raise CELERY_BROKER_TRANSPORT_OPTIONS"
            "['visibility_timeout'] above it.",
            id="cache_invalidation.E013",
        )
    ]


def _backend_class(path: str) -> type | None:
    try:
        found = import_string(path)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def _is(backend: type | None, path: str) -> bool:
    other = _backend_class(path)
    return backend is not None and other is not None and issubclass(backend, other)


def _check_cache_backend(
    alias: str, cache: dict[str, Any], config: dict[str, Any]
) -> list[checks.CheckMessage]:
    """Caches the app cannot work with, or that undo its guarantees."""

    out: list[checks.CheckMessage] = []
    path = str(cache.get("BACKEND", ""))
    backend = _backend_class(path)
    name = backend.__name__ if backend is not None else path
    transport = config["TRANSPORT"]
    if transport is None:
        transport = "celery" if celery_broker_configured() else "sync"
    if _is(backend, "django.core.cache.backends.dummy.DummyCache"):
        out.append(
            checks.Warning(
                f"CACHE_INVALIDATION['CACHE_ALIAS'] is {alias!r}, a DummyCache: it stores nothing, "
                "so every cached value is computed on every request and key patterns cannot be "
                "deleted.",
                hint="Point CACHE_ALIAS at the cache your entries live in. If caching is off on "
                "purpose, silence this: SILENCED_SYSTEM_CHECKS = ['cache_invalidation.W003'].",
                id="cache_invalidation.W003",
            )
        )
    elif _is(backend, "django.core.cache.backends.locmem.LocMemCache") and transport in (
        "celery",
        "outbox",
    ):
        where = {
            "celery": "the Celery worker applies every invalidation to its own copy",
            "outbox": "the outbox relay (relay_outbox, the beat task) applies what it delivers "
            "to its own copy",
        }[transport]
        out.append(
            checks.Warning(
                f"CACHE_INVALIDATION['CACHE_ALIAS'] is {alias!r}, a {name}, which lives inside "
                f"each process, but TRANSPORT is {transport!r}: {where}, never to the web "
                "processes' caches.",
                hint="Use a cache all processes share (django-redis, Memcached, the database "
                "cache), or TRANSPORT = 'sync' for a single-process development server.",
                id="cache_invalidation.W002",
            )
        )
    client_class = str((cache.get("OPTIONS") or {}).get("CLIENT_CLASS", ""))
    if client_class.rsplit(".", 1)[-1] == "ShardClient":
        out.append(
            checks.Error(
                f"The cache {alias!r} uses django-redis's ShardClient: the tag index runs one Lua "
                "script over many keys, which cannot span shards.",
                hint="Use django-redis's DefaultClient (or SentinelClient) for CACHE_ALIAS.",
                id="cache_invalidation.E014",
            )
        )
    out.extend(_check_default_timeout(alias, cache, config))
    return out


_LOCAL_KEYS = {
    "MAX_ENTRIES": ("a positive integer", lambda v: isinstance(v, int) and v > 0),
    "MAX_AGE": ("a positive number of seconds", lambda v: isinstance(v, (int, float)) and v > 0),
    "HEARTBEAT": ("a positive number of seconds", lambda v: isinstance(v, (int, float)) and v > 0),
    "DEFAULT": ("True or False", lambda v: isinstance(v, bool)),
}


def _check_local_cache(alias: str, cache: dict[str, Any], local: Any) -> list[checks.CheckMessage]:
    """``E015``/``E016``: ``LOCAL_CACHE`` is well formed, and the cache can keep it coherent."""
    if local is None:
        return []
    example = "{'MAX_ENTRIES': 10000, 'MAX_AGE': 60}"
    if not isinstance(local, dict):
        return [
            checks.Error(
                f"CACHE_INVALIDATION['LOCAL_CACHE'] must be None or a dict, not "
                f"{type(local).__name__}.",
                hint=f"For example {example}; every key is optional.",
                id="cache_invalidation.E015",
            )
        ]
    out: list[checks.CheckMessage] = []
    for key, value in local.items():
        if key not in _LOCAL_KEYS:
            out.append(
                checks.Error(
                    f"CACHE_INVALIDATION['LOCAL_CACHE'] has an unknown key {key!r}.",
                    hint="Known keys: " + ", ".join(_LOCAL_KEYS) + ".",
                    id="cache_invalidation.E015",
                )
            )
            continue
        what, valid = _LOCAL_KEYS[key]
        if (isinstance(value, bool) and key != "DEFAULT") or not valid(value):
            out.append(
                checks.Error(
                    f"CACHE_INVALIDATION['LOCAL_CACHE'][{key!r}] must be {what}, got {value!r}.",
                    hint=f"For example {example}.",
                    id="cache_invalidation.E015",
                )
            )
    if not _is(_backend_class(str(cache.get("BACKEND", ""))), "django_redis.cache.RedisCache"):
        out.append(
            checks.Error(
                f"CACHE_INVALIDATION['LOCAL_CACHE'] is on, but the cache {alias!r} is a "
                f"{cache.get('BACKEND')}: the local copies are kept coherent by Redis Pub/Sub "
                "announcements of every invalidation, which this backend cannot send, so a "
                "local copy would stay stale until MAX_AGE.",
                hint="Use django-redis for CACHE_ALIAS, or set LOCAL_CACHE to None.",
                id="cache_invalidation.E016",
            )
        )
    return out


def _check_default_timeout(
    alias: str, cache: dict[str, Any], config: dict[str, Any]
) -> list[checks.CheckMessage]:
    """Declared ``keys`` are usually written with plain ``cache.set()``, whose lifetime is the
    cache's ``TIMEOUT``, not ``MAX_TTL``: if one invalidation is lost, that is how long a stale
    entry survives."""

    max_ttl = config["MAX_TTL"]
    if isinstance(max_ttl, bool) or not isinstance(max_ttl, int) or max_ttl <= 0:
        return []  # E010 says so
    timeout = cache.get("TIMEOUT", 300)
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= max_ttl):
        return []
    example = next(((p.label, k.source) for p in registry.policies.values() for k in p.keys), None)
    if example is None:
        return []
    lifetime = "forever (TIMEOUT is None)" if timeout is None else f"for {timeout} s (TIMEOUT)"
    return [
        checks.Warning(
            f"The cache {alias!r} keeps entries stored without a timeout {lifetime}, longer than "
            f"MAX_TTL ({max_ttl} s). Declared keys such as {example[1]!r} of {example[0]} are "
            "usually written with plain cache.set(), so a lost invalidation leaves them stale "
            "that long.",
            hint=f"Set CACHES[{alias!r}]['TIMEOUT'] to at most MAX_TTL, or pass a timeout to "
            "every cache.set() of a declared key.",
            id="cache_invalidation.W004",
        )
    ]
