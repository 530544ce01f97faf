"""A user's signal receiver that raises: the batch it hears about goes on as if nobody listened.

Real transports (sync, a real Celery worker thread, the outbox on the test database), the real
cache; the receivers are the user's code, connected the way a user would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db import transaction

from cache_invalidation import invalidate, no_invalidation, signals, tagged_cache
from cache_invalidation.models import DeadLetter, OutboxEvent
from testproject.shop.models import Category, Product
from tests.conftest import wait_for
from tests.faults import row

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


class Boom(Exception):
    pass


def raising_receiver(**kwargs: object) -> None:
    raise Boom("a user's receiver failed")


@pytest.fixture
def raising(request: pytest.FixtureRequest) -> Iterator[signals.Signal]:
    """Connect :func:`raising_receiver` to the signal named by the test's parameter."""
    signal = getattr(signals, request.param)
    signal.connect(raising_receiver, dispatch_uid="test-raising")
    yield signal
    signal.disconnect(dispatch_uid="test-raising")


@pytest.fixture
def product() -> Product:
    with no_invalidation():
        category = Category.objects.create(name="c", slug="c")
        return Product.objects.create(name="p", price=Decimal(1), category=category)


def _ignored_errors(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if f"a receiver of {name} raised (ignored: the batch is not affected)" in r.getMessage()
            and "raising_receiver" in r.getMessage() and r.levelno == logging.ERROR]


@row("A user's invalidation_published receiver that raises",
     "a receiver raising an exception connected to invalidation_published; a product saved "
     "inside transaction.atomic() and in autocommit, with TRANSPORT sync, celery (real worker) "
     "and outbox",
     "save() does not raise, Django logs no 'Error calling Batch.flush', the entry is gone, no "
     "dead letter and no outbox row left; the receiver's exception is logged at ERROR with "
     "its traceback")
@pytest.mark.celery
@pytest.mark.parametrize("transport", ["sync", "celery", "outbox"])
@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "autocommit"])
@pytest.mark.parametrize("raising", ["invalidation_published"], indirect=True)
def test_a_raising_published_receiver_drops_nothing(settings, celery_worker, caplog, raising,
                                                    product, transport, atomic):
    settings.CACHE_INVALIDATION = {"TRANSPORT": transport}
    tagged_cache.set("detail", "old", tags=[f"product:{product.pk}"])
    product.name = "new"
    with caplog.at_level(logging.ERROR):
        if atomic:
            with transaction.atomic():
                product.save()
        else:
            product.save()  # used to raise after the commit
        assert wait_for(lambda: tagged_cache.get("detail") is None, timeout=20)
    assert not any("Batch.flush" in r.getMessage() for r in caplog.records)
    assert _ignored_errors(caplog, "invalidation_published")
    [record] = _ignored_errors(caplog, "invalidation_published")
    assert record.exc_info and record.exc_info[0] is Boom
    assert not DeadLetter.objects.exists()
    assert not OutboxEvent.objects.exists()


@row("A user's invalidation_applied receiver that raises",
     "a receiver raising an exception connected to invalidation_applied; invalidate() through "
     "the sync transport and through a real Celery worker",
     "the invalidation counts as done: the entry is gone, nothing is retried or dead-lettered "
     "(it used to become an apply_failed dead letter), the exception is logged at ERROR")
@pytest.mark.celery
@pytest.mark.parametrize("transport", ["sync", "celery"])
@pytest.mark.parametrize("raising", ["invalidation_applied"], indirect=True)
def test_a_raising_applied_receiver_does_not_dead_letter(settings, celery_worker, caplog, raising,
                                                         recorder, transport):
    settings.CACHE_INVALIDATION = {"TRANSPORT": transport}
    tagged_cache.set("page", "old", tags=["promo:1"])
    with caplog.at_level(logging.ERROR):
        invalidate(tags=["promo:1"])
        assert wait_for(lambda: _ignored_errors(caplog, "invalidation_applied"), timeout=20)
    assert tagged_cache.get("page") is None
    assert len(recorder.applied) == 1  # the other receivers still heard it
    assert recorder.failed == []
    assert not DeadLetter.objects.exists()


@row("A user's invalidation_failed or dead_lettered receiver that raises",
     "a receiver raising an exception connected to each; invalidate() with the sync transport "
     "against a cache alias whose Redis is unreachable, ALERT_AFTER_ATTEMPTS 1",
     "the dead letter is still written once; the receiver's exception is logged at ERROR")
@pytest.mark.parametrize("raising", ["invalidation_failed", "dead_lettered"], indirect=True)
def test_raising_failure_receivers_still_leave_the_dead_letter(settings, caplog, raising):
    settings.CACHES = {
        **settings.CACHES,
        "nowhere": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2},
        },
    }
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "nowhere",
                                   "ALERT_AFTER_ATTEMPTS": 1, "MAIL_ADMINS": False}
    with caplog.at_level(logging.ERROR):
        invalidate(tags=["unreachable"])
    assert DeadLetter.objects.filter(tags=["unreachable"]).count() == 1
    name = "invalidation_failed" if raising is signals.invalidation_failed else "dead_lettered"
    assert _ignored_errors(caplog, name)


@row("invalidation_published with the sync transport",
     "a receiver of invalidation_published reads the entry the saved product's tag covers",
     "the receiver finds it gone: the signal is sent after the batch was applied")
def test_the_sync_transport_publishes_after_applying(settings, product):
    """``invalidation_published`` reports work done: with ``sync``, a receiver already finds
    the entry gone."""
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync"}
    tagged_cache.set("detail", "old", tags=[f"product:{product.pk}"])
    seen: list[object] = []

    def look(**kwargs: object) -> None:
        seen.append(tagged_cache.get("detail", "missing"))

    signals.invalidation_published.connect(look, dispatch_uid="test-look")
    try:
        product.save()
    finally:
        signals.invalidation_published.disconnect(dispatch_uid="test-look")
    assert seen == ["missing"]
