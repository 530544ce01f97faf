"""System checks: broken declarations and settings fail at startup, with ids and hints.

Declarations: ``E001`` not a dict, ``E002`` unknown option, ``E003`` wrong type, ``E004`` a
template names no usable field, ``E005`` a template uses attribute/index access, a positional
placeholder or a format spec, ``E006`` ``on_fields`` names no field.
Settings: ``E010`` ``CACHE_INVALIDATION`` is malformed or has an unknown key or a bad value,
``E011`` ``CACHE_ALIAS`` names no cache, ``E012`` unknown ``TRANSPORT``,
``W001`` the cache swallows errors (``IGNORE_EXCEPTIONS``).
"""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core import checks

from .conf import DEFAULTS, TRANSPORTS


def register() -> None:
    checks.register(check_declarations, "cache_invalidation")
    checks.register(check_settings, "cache_invalidation")


def check_declarations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from .registry import registry

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
    "STALE_TTL",
    "MAX_RELATED_DEPTH",
    "MAX_DELIVERIES",
    "MAX_TAGS_PER_EVENT",
    "RATE_LIMIT_WINDOW",
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
                    + "Known keys: " + ", ".join(DEFAULTS) + ".",
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
    for key in ("MAX_RETRIES", "MODEL_RATE_LIMIT"):
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
                    f"CACHE_INVALIDATION[{key!r}] must be a number of seconds >= 0, "
                    f"got {value!r}.",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="cache_invalidation.E010",
                )
            )
    alias = config["CACHE_ALIAS"]
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        errors.append(
            checks.Error(
                f"CACHE_INVALIDATION['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.",
                hint="Name one of: " + ", ".join(map(repr, caches)) + "." if caches else
                "Configure CACHES.",
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
        from celery import current_app

        url = url or current_app.conf.broker_url or ""
        if options is None:
            options = current_app.conf.broker_transport_options
    except Exception:  # pragma: no cover - celery is a dependency
        pass
    return str(url), dict(options or {})


def _check_visibility_timeout(config: dict[str, Any]) -> list[checks.CheckMessage]:
    """A retry countdown longer than the Redis broker's visibility timeout is redelivered to
    another worker while the first still holds it: the task runs twice, and again, in a loop."""
    from .conf import celery_broker_configured

    if config["TRANSPORT"] not in (None, "celery") or not celery_broker_configured():
        return []
    url, options = _broker()
    if not url.split("://", 1)[0] in ("redis", "rediss", "sentinel"):
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
