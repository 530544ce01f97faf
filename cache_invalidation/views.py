"""``metrics_view``: the shared metrics and the status in Prometheus' text format.

Needs the optional ``prometheus_client`` (``pip install 'django-cache-invalidation[prometheus]'``);
without it the view answers 501 and says so. Each request builds a private
``CollectorRegistry`` from :func:`cache_invalidation.metrics.read_totals` and
:func:`cache_invalidation.health.status`, so nothing is kept in the process and every worker
serves the same numbers.

Access: an active staff user, or a request carrying ``Authorization: Bearer <METRICS_TOKEN>``
when that setting is set (what a Prometheus scraper sends with ``authorization:
{credentials: ...}``). Anyone else gets 403.

Exposed:

- ``cache_invalidation_events_total{model, outcome}`` (counter): events per model; outcome is
  published, applied, failed, dead_lettered, duplicates or escalated. Kept in the cache: it
  resets if the cache is flushed or after 7 days without events (Prometheus' ``rate()``
  handles resets).
- ``cache_invalidation_lag_seconds`` (histogram): event made -> applied.
- ``cache_invalidation_lag_last_hour_seconds{quantile}`` (gauge): the estimated p50/p95/p99
  of the last hour.
- ``cache_invalidation_dead_letters_pending``,
  ``cache_invalidation_dead_letters_oldest_age_seconds``, ``cache_invalidation_outbox_rows``,
  ``cache_invalidation_outbox_oldest_age_seconds`` (gauges).
- ``cache_invalidation_changes_slot_lag_bytes``, ``cache_invalidation_changes_lag_seconds``,
  ``cache_invalidation_changes_heartbeat_age_seconds`` (gauges), when the status watches change
  data capture (``STATUS_MAX_SLOT_LAG`` or ``STATUS_MAX_CHANGES_AGE`` set).
- ``cache_invalidation_up{check}`` (gauge, 1/0): cache, database, and broker when used;
  ``cache_invalidation_healthy`` (gauge, 1/0): :func:`cache_invalidation.health.healthy`.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from . import health, metrics
from .conf import get_config

NOT_INSTALLED = (
    "prometheus_client is not installed: pip install 'django-cache-invalidation[prometheus]' "
    "(or prometheus_client>=0.17) to serve metrics here.\n"
)
FORBIDDEN = (
    "Forbidden: log in as a staff user, or send 'Authorization: Bearer <token>' with "
    "CACHE_INVALIDATION['METRICS_TOKEN'].\n"
)


def allowed(request: HttpRequest) -> bool:
    """Whether ``request`` may read the metrics (staff user or the bearer token)."""

    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    token = get_config()["METRICS_TOKEN"]
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), str(token).encode())
    return False


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET: the metrics in Prometheus text exposition format (see the module docstring)."""
    if not allowed(request):
        return HttpResponse(FORBIDDEN, status=403, content_type="text/plain; charset=utf-8")
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest  # noqa: PLC0415 - optional dependency
    except ImportError:
        return HttpResponse(NOT_INSTALLED, status=501, content_type="text/plain; charset=utf-8")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _Collector:
    """Reads the shared store and the status once per scrape."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 - optional dependency
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        status = health.status()
        totals: dict[str, Any] = {"per_model": {}, "lag": None}
        if status["cache"]["ok"]:
            # The cache may go away between the probe and the read: then no counters.
            with contextlib.suppress(Exception):
                totals = metrics.read_totals()

        events = CounterMetricFamily(
            "cache_invalidation_events",
            "Invalidation events per model and outcome.",
            labels=["model", "outcome"],
        )
        for model, counts in sorted(totals["per_model"].items()):
            for outcome in metrics.NAMES:
                events.add_metric([model, outcome], counts.get(outcome, 0))
        yield events

        lag = totals["lag"]
        if lag is not None:
            cumulative, buckets = 0, []
            bounds = [f"{b / 1000:g}" for b in metrics.LAG_BOUNDS_MS] + ["+Inf"]
            for bound, count in zip(bounds, lag["buckets"], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram = HistogramMetricFamily(
                "cache_invalidation_lag_seconds",
                "Seconds from an event being made (before commit) to its invalidation applied.",
            )
            histogram.add_metric([], buckets, sum_value=lag["sum_ms"] / 1000)
            yield histogram

        quantiles = GaugeMetricFamily(
            "cache_invalidation_lag_last_hour_seconds",
            "Estimated lag percentiles over the last hour (from the histogram).",
            labels=["quantile"],
        )
        hour = status["metrics"]["lag_ms"]
        for name, q in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
            if hour[name] is not None:
                quantiles.add_metric([q], hour[name] / 1000)
        yield quantiles

        letters, backlog = status["dead_letters"], status["outbox"]
        for name, doc, value in (
            (
                "cache_invalidation_dead_letters_pending",
                "Pending dead letters.",
                letters["pending"],
            ),
            (
                "cache_invalidation_dead_letters_oldest_age_seconds",
                "Age of the oldest pending dead letter (0 when none).",
                letters["oldest_age"] or 0,
            ),
            (
                "cache_invalidation_outbox_rows",
                "Outbox rows waiting for delivery.",
                backlog["rows"],
            ),
            (
                "cache_invalidation_outbox_oldest_age_seconds",
                "Age of the oldest outbox row (0 when none).",
                backlog["oldest_age"] or 0,
            ),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        changes = status.get("changes") or {}
        if changes.get("used"):
            for name, doc, value in (
                (
                    "cache_invalidation_changes_slot_lag_bytes",
                    "WAL bytes the consume_changes slot holds behind the current position.",
                    changes.get("lag_bytes"),
                ),
                (
                    "cache_invalidation_changes_lag_seconds",
                    "How far behind consume_changes' last round was, plus the time since it.",
                    changes.get("lag_seconds"),
                ),
                (
                    "cache_invalidation_changes_heartbeat_age_seconds",
                    "Seconds since consume_changes last finished a round.",
                    changes.get("heartbeat_age"),
                ),
            ):
                if value is not None:
                    yield GaugeMetricFamily(name, doc, value=value)

        local = status.get("local") or {}
        if local.get("used") and not local.get("error"):
            yield GaugeMetricFamily(
                "cache_invalidation_local_subscribers",
                "Processes subscribed to the invalidation announcements (PUBSUB NUMSUB).",
                value=local["subscribers"],
            )
            reads = CounterMetricFamily(
                "cache_invalidation_local_reads",
                "Reads of the local caches of every process, by result (miss includes bypass).",
                labels=["result"],
            )
            reads.add_metric(["hit"], local["hits"])
            reads.add_metric(["miss"], local["misses"])
            yield reads
            flushes = CounterMetricFamily(
                "cache_invalidation_local_flushes",
                "Local caches flushed, by cause (gap, epoch, disconnected, ping...).",
                labels=["cause"],
            )
            for cause, count in sorted(local["flushes"].items()):
                flushes.add_metric([cause], count)
            yield flushes

        up = GaugeMetricFamily(
            "cache_invalidation_up", "1 when the check answered, else 0.", labels=["check"]
        )
        for check in ("cache", "database", "broker"):
            if check != "broker" or status["broker"]["used"]:
                up.add_metric([check], 1 if status[check]["ok"] else 0)
        yield up
        yield GaugeMetricFamily(
            "cache_invalidation_healthy",
            "1 when manage.py cache_invalidation_status would exit 0.",
            value=1 if status["healthy"] else 0,
        )
