"""The celery transport against a real broker and a real worker thread."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
import redis
from celery import Celery

from cache_invalidation import TaggedCache, invalidate, no_invalidation, tagged_cache
from cache_invalidation.models import DeadLetter
from cache_invalidation.tasks import apply_batch
from testproject.shop.models import Category, Product
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.celery]


@pytest.fixture
def celery_transport(settings, celery_worker):
    settings.CACHE_INVALIDATION = {
        "TRANSPORT": "celery",
        "RETRY_BACKOFF": 0.2,
        "RETRY_BACKOFF_MAX": 0.5,
        "RETRY_JITTER": False,
    }
    return settings


def test_commit_to_deletion_through_the_worker(celery_transport, recorder):
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        product = Product.objects.create(name="Arc", price=Decimal("1.00"), category=category)
    tagged_cache.set("detail", "old", tags=[f"product:{product.pk}"])
    tagged_cache.set("listing", "old", tags=[f"category:{category.pk}:products"])
    product.name = "Arc 2"
    product.save()
    assert recorder.published, "published to the broker at commit"
    assert wait_for(lambda: tagged_cache.get("detail") is None)
    assert wait_for(lambda: tagged_cache.get("listing") is None)
    assert wait_for(lambda: len(recorder.applied) == 1)


def test_task_is_declared_reliable():
    assert apply_batch.acks_late is True
    assert apply_batch.serializer == "json"
    assert apply_batch.name == "cache_invalidation.apply_batch"


def test_broker_down_at_commit_keeps_the_request_alive_and_reports(
    celery_transport, celery_app, recorder, caplog
):
    broken = Celery("broken", broker="redis://127.0.0.1:1/0", set_as_current=False)
    broken.conf.broker_connection_timeout = 0.5
    broken.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    broken.set_current()
    try:
        with caplog.at_level(logging.ERROR, logger="cache_invalidation"):
            book_event = invalidate(tags=["will-not-arrive"])  # the user's request goes on
    finally:
        celery_app.set_current()
    [failure] = recorder.failed
    assert failure["stage"] == "publish" and failure["will_retry"] is False
    assert failure["events"][0].id == book_event.id
    [record] = [r for r in caplog.records if "publish of 1 event(s) failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert book_event.id in record.getMessage()  # the event itself is in the log line
    assert recorder.published == []
    [letter] = DeadLetter.objects.all()  # and it is durable: replayable later
    assert letter.reason == "publish_failed" and letter.status == "pending"
    assert letter.tags == ["will-not-arrive"] and letter.event_ids == [book_event.id]


def test_redis_down_while_the_task_runs_retries_then_succeeds(
    celery_transport, private_redis, recorder
):
    settings = celery_transport
    settings.CACHES = {
        **settings.CACHES,
        "private": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": private_redis.url,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        },
    }
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "CACHE_ALIAS": "private"}
    private = TaggedCache("private")
    private.set("entry", "stale soon", tags=["outage"])
    raw = redis.Redis.from_url(private_redis.url)
    assert raw.dbsize() >= 2
    private_redis.stop()

    invalidate(tags=["outage"])
    assert wait_for(lambda: any(f["will_retry"] for f in recorder.failed), timeout=20)
    assert recorder.failed[0]["stage"] == "apply"
    private_redis.start()  # same port, data kept in its append-only file
    assert wait_for(lambda: private.get("entry") is None, timeout=30)
    assert wait_for(lambda: len(recorder.applied) == 1)


def test_malformed_message_is_reported_not_retried(celery_transport, recorder):
    apply_batch.apply_async(args=[[{"type": "x"}]], serializer="json")
    assert wait_for(lambda: recorder.failed)
    [failure] = recorder.failed
    assert failure["stage"] == "decode" and failure["will_retry"] is False
    assert "'id' is required" in str(failure["error"])
    assert wait_for(lambda: DeadLetter.objects.filter(reason="malformed").exists())
    letter = DeadLetter.objects.get()
    assert letter.events == [{"type": "x"}] and letter.attempts == 1


def test_retries_stop_after_max_retries_with_an_error(celery_transport, recorder, caplog):
    settings = celery_transport
    settings.CACHES = {
        **settings.CACHES,
        "nowhere": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2},
        },
    }
    settings.CACHE_INVALIDATION = {
        **settings.CACHE_INVALIDATION, "CACHE_ALIAS": "nowhere", "MAX_RETRIES": 2
    }
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        event = invalidate(tags=["unreachable"])
        assert wait_for(lambda: len(recorder.failed) == 3, timeout=20)
    assert [f["will_retry"] for f in recorder.failed] == [True, True, False]
    final = [r for r in caplog.records if "apply of 1 event(s) failed:" in r.getMessage()]
    assert final[-1].levelno == logging.ERROR and event.id in final[-1].getMessage()
    assert recorder.applied == []
    assert wait_for(lambda: DeadLetter.objects.exists())
    [letter] = DeadLetter.objects.all()
    assert (letter.reason, letter.attempts, letter.tags) == ("retries_exhausted", 3, ["unreachable"])
    assert "ConnectionError" in letter.last_error
