"""``manage.py cache_invalidation_status``, ``health.status()`` and the Prometheus view."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from celery import Celery
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from cache_invalidation import deadletter, health, invalidate, metrics, no_invalidation
from cache_invalidation.management.commands.cache_invalidation_status import Command
from cache_invalidation.models import OutboxEvent
from testproject.shop.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def status(*args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("cache_invalidation_status", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


@pytest.fixture
def saved_product():
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        product = Product.objects.create(name="Arc", price=Decimal("1.00"), category=category)
    product.price = Decimal("2.00")
    product.save()
    return product


def test_healthy_prints_every_section_and_exits_0(saved_product):
    code, out, _ = status()
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == Command.HEALTH
    assert lines[1].startswith("  cache     ok        PING answered (redis ")
    assert lines[2].startswith("  eviction  ")
    assert "maxmemory-policy noeviction" in lines[2]  # the shared Redis's policy
    assert lines[3] == "  broker    -         not used (TRANSPORT is 'sync')"
    assert lines[4].startswith("  database  ok        SELECT 1 ('default', ")
    assert Command.TRANSPORT.format(transport="sync", alias="default") in lines
    assert "Events, last hour" in lines and "Events, last day" in lines
    row = Command.EVENTS_ROW.format(model="shop.Product", **{**dict.fromkeys(metrics.NAMES, 0),
                                                            "published": 1, "applied": 1})
    assert lines.count(row) == 2  # hour and day
    assert any(line.startswith("  last hour  p50 ") and line.endswith("(1 sample(s))")
               for line in lines)
    assert "Dead letters: 0 pending" in lines
    assert "Outbox: 0 row(s) (transport not used)" in lines
    assert Command.INDEX_SKIPPED in lines
    assert lines[-1] == Command.HEALTHY


def test_index_is_scanned_only_when_asked(saved_product):
    from cache_invalidation import tagged_cache

    tagged_cache.set("page", "x", tags=["a", "b"])
    code, out, _ = status("--index")
    assert code == 0
    assert "Tag index: 2 tag set(s), 2 member(s), 0 dead" in out.splitlines()  # a and b
    assert health.status()["index"] == {"scanned": False}


def test_json_has_the_documented_shape(saved_product):
    code, out, _ = status("--json")
    assert code == 0
    found = json.loads(out)
    assert set(found) == {
        "healthy", "problems", "warnings", "generated_at", "transport", "cache_alias", "cache",
        "broker", "database", "dead_letters", "outbox", "changes", "local", "index", "metrics",
        "limits", "versions",
    }
    assert found["local"] == {"used": False}
    assert found["healthy"] is True and found["problems"] == []
    assert found["cache"]["eviction"]["policy"] == "noeviction"
    assert found["cache"]["ok"] is True and found["broker"]["used"] is False
    assert found["dead_letters"] == {"pending": 0, "oldest_age": None, "by_reason": {},
                                     "error": None}
    assert found["outbox"] == {"used": False, "rows": 0, "oldest_age": None, "error": None}
    assert found["limits"] == {"STATUS_MAX_DLQ": 0, "STATUS_MAX_OUTBOX_AGE": 300,
                               "STATUS_MAX_SLOT_LAG": None, "STATUS_MAX_CHANGES_AGE": None}
    assert found["changes"]["used"] is False  # not watched unless a STATUS_MAX_* is set
    snapshot = found["metrics"]
    assert set(snapshot) == {"available", "error", "window", "per_model", "totals", "lag_ms",
                             "lag_ms_day", "lag_histogram"}
    assert snapshot["per_model"]["shop.Product"]["hour"]["applied"] == 1
    assert snapshot["totals"]["day"]["published"] == 1
    assert set(snapshot["lag_ms"]) == {"p50", "p95", "p99", "mean", "samples"}
    assert found["versions"]["cache_invalidation"] == "0.1.0"


def test_cache_down_exits_1_and_says_why(settings, private_redis):
    settings.CACHES = {**settings.CACHES, "private": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": private_redis.url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.3, "SOCKET_TIMEOUT": 0.5}}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    assert status()[0] == 0
    private_redis.stop()

    code, out, message = status()

    assert code == 1
    assert message.startswith(
        "Unhealthy: the cache 'private' does not answer: ConnectionError: Error 111 connecting")
    assert "  cache     DOWN" in out
    assert Command.METRICS_UNAVAILABLE.format(
        error="not read: the cache does not answer") in out.splitlines()
    assert Command.HEALTHY not in out
    assert health.healthy(health.status()) is False


def test_a_pending_dead_letter_is_unhealthy_until_the_limit_allows_it(settings):
    from cache_invalidation import InvalidationEvent

    deadletter.record([InvalidationEvent(type="manual", tags=("x",))], "apply_failed", "boom")

    code, out, message = status()
    assert code == 1
    assert message == Command.UNHEALTHY.format(problems=health.DLQ_PENDING.format(
        pending=1, limit=0))
    assert message == ("Unhealthy: 1 dead letter(s) pending (STATUS_MAX_DLQ is 0); replay them "
                       "with manage.py replay_dead_letters.")
    assert "Dead letters: 1 pending, oldest 0 s (1 apply_failed)" in out.splitlines()

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "STATUS_MAX_DLQ": 1}
    assert status()[0] == 0


def test_an_outbox_row_waiting_too_long_is_unhealthy(settings):
    import uuid

    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox", "STATUS_MAX_OUTBOX_AGE": 60}
    OutboxEvent.objects.create(batch=uuid.uuid4(), event={},
                               created_at=timezone.now() - timedelta(seconds=90))
    code, out, message = status()
    assert code == 1
    assert message.startswith("Unhealthy: the oldest outbox row has waited 9")
    assert message.endswith(" s (STATUS_MAX_OUTBOX_AGE is 60); is manage.py relay_outbox "
                            "running?.")
    assert "Outbox: 1 row(s), oldest 9" in out


def test_broker_is_checked_only_with_the_celery_transport(settings, celery_app):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    broker = health.check_broker()
    assert broker["ok"] is True and broker["used"] is True, broker

    broken = Celery("broken", broker="redis://127.0.0.1:1/0", set_as_current=False)
    broken.set_current()
    try:
        code, _, message = status()
    finally:
        celery_app.set_current()
    assert code == 1
    assert message.startswith("Unhealthy: the Celery broker does not answer: ")


def test_bad_usage_exits_2():
    code, _, message = status("--database", "nope")
    assert code == 2
    assert message == Command.BAD_DATABASE.format(alias="nope", choices="default, other")

    result = subprocess.run(
        [sys.executable, "-m", "django", "cache_invalidation_status", "--bogus",
         "--settings=tests.settings"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "unrecognized arguments: --bogus" in result.stderr


def test_quiet_run_prints_nothing_but_still_exits_by_health(saved_product):
    assert status("--verbosity", "0") == (0, "", "")


# -- the Prometheus view ------------------------------------------------------------------


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    client.force_login(user)
    return client


URL = "/cache-invalidation/metrics/"


def test_prometheus_exposition_has_the_expected_metrics(staff_client, saved_product):
    invalidate(tags=["home"])
    response = staff_client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    for line in (
        'cache_invalidation_events_total{model="shop.Product",outcome="applied"} 1.0',
        'cache_invalidation_events_total{model="manual",outcome="published"} 1.0',
        "cache_invalidation_lag_seconds_count 2.0",
        'cache_invalidation_lag_seconds_bucket{le="+Inf"} 2.0',
        "cache_invalidation_dead_letters_pending 0.0",
        "cache_invalidation_outbox_rows 0.0",
        'cache_invalidation_up{check="cache"} 1.0',
        'cache_invalidation_up{check="database"} 1.0',
        "cache_invalidation_healthy 1.0",
    ):
        assert line in text.splitlines(), line
    assert "# TYPE cache_invalidation_lag_seconds histogram" in text
    assert 'cache_invalidation_lag_last_hour_seconds{quantile="0.99"}' in text
    assert 'check="broker"' not in text  # not used with TRANSPORT = "sync"


def test_prometheus_view_needs_staff_or_the_token(client, settings):
    from cache_invalidation.views import FORBIDDEN

    response = client.get(URL)
    assert (response.status_code, response.content.decode()) == (403, FORBIDDEN)
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "METRICS_TOKEN": "s3cret-token-0123456"}
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    response = client.get(URL, HTTP_AUTHORIZATION="Bearer s3cret-token-0123456")
    assert response.status_code == 200
    assert b"cache_invalidation_healthy 1.0" in response.content


def test_prometheus_view_without_prometheus_client_answers_501(staff_client, monkeypatch):
    from cache_invalidation.views import NOT_INSTALLED

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    response = staff_client.get(URL)
    assert (response.status_code, response.content.decode()) == (501, NOT_INSTALLED)
