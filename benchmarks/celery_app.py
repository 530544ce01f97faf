"""The Celery app of the ``ours_celery`` contender; its worker reports what it applied.

``python -m benchmarks run --contender ours_celery`` starts one worker,
``python -m celery -A benchmarks.celery_app worker --pool solo``, with the run's environment.
When the worker is ready it sets ``bench:ready``; after every applied batch it appends
``[time.time(), event ids...]`` to the list ``bench:applied``, both in the bookkeeping Redis
database, so the run can pair each commit with the moment its invalidation was applied.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

from .tracking import APPLIED, READY

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings.ours_celery")

app = Celery("benchmarks")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["cache_invalidation"])

_client: Any = None


def bookkeeping() -> Any:
    global _client
    if _client is None:
        import redis
        from django.conf import settings

        _client = redis.Redis.from_url(settings.BOOKKEEPING_URL)
    return _client


def _on_applied(sender: Any, events: Any, **kwargs: Any) -> None:
    bookkeeping().rpush(APPLIED, json.dumps([time.time(), *(e.id for e in events)]))


@worker_init.connect
def _init(**kwargs: Any) -> None:
    from cache_invalidation import signals

    signals.invalidation_applied.connect(_on_applied, dispatch_uid="bench.worker.applied")


@worker_ready.connect
def _ready(**kwargs: Any) -> None:
    bookkeeping().set(READY, os.getpid())
