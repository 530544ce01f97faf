"""TRANSPORT=None picks the transport from what is configured."""

from celery import Celery

from cache_invalidation.conf import get_config


def test_no_broker_means_sync(settings, celery_app):
    del settings.CELERY_BROKER_URL
    settings.CACHE_INVALIDATION = {}
    bare = Celery("bare", set_as_current=False)
    bare.set_current()
    try:
        assert get_config()["TRANSPORT"] == "sync"
    finally:
        celery_app.set_current()


def test_a_configured_broker_means_celery(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/12"
    settings.CACHE_INVALIDATION = {}
    assert get_config()["TRANSPORT"] == "celery"


def test_explicit_transport_wins(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox"}
    assert get_config()["TRANSPORT"] == "outbox"
