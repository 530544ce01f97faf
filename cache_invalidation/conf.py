"""Settings: one defaults table, read lazily through :func:`get_config`.

Every key of ``settings.CACHE_INVALIDATION`` is optional. The merged view is cached and dropped
on ``setting_changed`` so ``override_settings`` works in tests. Validation of the values lives in
:mod:`cache_invalidation.checks`, which reports problems at startup with ids.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # The Django cache that holds cached entries and the tag index.
    "CACHE_ALIAS": "default",
    # "sync" | "celery" | "outbox"; None picks "celery" when a Celery broker is configured,
    # else "sync".
    "TRANSPORT": None,
    # With "outbox": deliver a committed batch at once, in-process; the relay catches up on
    # whatever that could not deliver (process died, cache down).
    "OUTBOX_DELIVER_ON_COMMIT": True,
    # No entry written through the app lives longer than this many seconds.
    "MAX_TTL": 3600,
    # Celery retries of a failed invalidation: exponential backoff with full jitter.
    "MAX_RETRIES": 8,
    "RETRY_BACKOFF": 1,
    "RETRY_BACKOFF_MAX": 300,
    "RETRY_JITTER": True,
    # Celery queue for invalidation tasks (None: the app's default queue).
    "CELERY_QUEUE": None,
    # Herd control in get_or_set: the first miss takes a lease for LEASE_TIMEOUT seconds and
    # computes; other misses wait up to LEASE_WAIT seconds for its value (or get the stale copy,
    # kept STALE_TTL seconds past the entry's TTL, when they ask for stale_while_revalidate).
    "LEASE_TIMEOUT": 10,
    "LEASE_WAIT": 5,
    "STALE_TTL": 300,
    # How many hops a Meta "related" cascade follows (Review -> Product -> Category is 2).
    "MAX_RELATED_DEPTH": 3,
    # Storm control: an event deriving more tags than this, or a model publishing more events
    # than MODEL_RATE_LIMIT per RATE_LIMIT_WINDOW seconds (0: no limit), is escalated to the
    # model's coarse tag.
    "MAX_TAGS_PER_EVENT": 1000,
    "MODEL_RATE_LIMIT": 5000,
    "RATE_LIMIT_WINDOW": 1,
    # A dead letter that failed this many attempts alerts: CRITICAL log, the dead_lettered
    # signal and (with MAIL_ADMINS) an email to settings.ADMINS.
    "ALERT_AFTER_ATTEMPTS": 3,
    "MAIL_ADMINS": True,
    # Event ids already applied are remembered this long; redeliveries become no-ops.
    "DEDUP_WINDOW": 86400,
    # A message delivered this many times to workers that died before finishing it is
    # dead-lettered instead of being redelivered again (a poison message).
    "MAX_DELIVERIES": 5,
    # An event whose compact JSON encoding is larger than this many bytes is refused by the
    # worker (dead-lettered as malformed); larger events the app makes itself are published
    # as several parts under the limit.
    "MAX_EVENT_BYTES": 1_048_576,
    # manage.py cache_invalidation_status (and health.status()) reports unhealthy when more
    # dead letters than this are pending, or the oldest outbox row waits longer than this
    # many seconds.
    "STATUS_MAX_DLQ": 0,
    "STATUS_MAX_OUTBOX_AGE": 300,
    # Change data capture (manage.py consume_changes): the PostgreSQL database alias whose
    # logical replication slot and publication are read, their names, and how many decoded
    # messages a round reads at most (whole transactions: a round may read more).
    "CHANGES_DATABASE": "default",
    "CHANGES_SLOT": "ci_changes",
    "CHANGES_PUBLICATION": "ci_changes",
    "CHANGES_BATCH": 10_000,
    # Mark each transaction that publishes ORM-path events with a logical decoding message
    # naming its tables, so consume_changes skips those tables' changes in it (PostgreSQL only).
    "CHANGES_MARK_TRANSACTIONS": False,
    # consume_changes is the only producer of model events on CHANGES_DATABASE: the ORM path
    # keeps its events until commit (so nothing computed from uncommitted writes is stored)
    # but does not publish them; invalidate() still publishes at once.
    "CHANGES_ONLY": False,
    # The status is unhealthy when the slot holds more WAL than this many bytes behind the
    # current position, or the consumer's last round finished longer ago than this many
    # seconds (None: not checked; the slot is only looked at when one of them is set).
    "STATUS_MAX_SLOT_LAG": None,
    "STATUS_MAX_CHANGES_AGE": None,
    # The local cache (L1) in each process, kept coherent by Redis Pub/Sub (django-redis
    # only): None is off; a dict {"MAX_ENTRIES": 10000, "MAX_AGE": 60, "HEARTBEAT": 1.0,
    # "DEFAULT": False} (every key optional) turns it on for get_or_set(local=True), and for
    # every call when DEFAULT is True.
    "LOCAL_CACHE": None,
    # A bearer token that lets a Prometheus scraper read cache_invalidation.views.metrics_view
    # (staff users may always read it); None: staff only.
    "METRICS_TOKEN": None,
    # Metric counts are aggregated in each process and written at most this many seconds
    # after they happened, with a later invalidation's script call or by a timer (0: with
    # every batch, as its own write). A process killed outright loses at most this much.
    "METRICS_FLUSH_INTERVAL": 1.0,
}

TRANSPORTS = ("sync", "celery", "outbox")


@cache
def get_config() -> dict[str, Any]:
    """Return the effective settings: defaults overlaid with ``settings.CACHE_INVALIDATION``.

    Unknown keys are kept (the system check ``cache_invalidation.E010`` names them); the
    ``TRANSPORT`` key is resolved here, so readers always see "sync" or "celery".
    """
    user = getattr(settings, "CACHE_INVALIDATION", None) or {}
    config = {**DEFAULTS, **(user if isinstance(user, dict) else {})}
    if config["TRANSPORT"] is None:
        config["TRANSPORT"] = "celery" if celery_broker_configured() else "sync"
    return config


def celery_broker_configured() -> bool:
    """True when a Celery broker URL is set in Django settings or on the current Celery app."""
    if getattr(settings, "CELERY_BROKER_URL", None) or getattr(settings, "BROKER_URL", None):
        return True
    try:
        from celery import current_app  # noqa: PLC0415 - optional dependency
    except ImportError:  # pragma: no cover - celery is a declared dependency
        return False
    return bool(current_app.conf.broker_url)


CONFIG_SETTINGS = frozenset({"CACHE_INVALIDATION", "CELERY_BROKER_URL", "BROKER_URL", "CACHES"})
"""The Django settings :func:`get_config` reads. A module that caches something derived from
them resets itself on ``setting_changed`` for these (this module imports nobody)."""


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in CONFIG_SETTINGS:
        get_config.cache_clear()
