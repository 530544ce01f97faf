"""Settings for the subprocess Celery workers of ``tests/test_worker_loss.py``.

Like ``tests/settings_process.py`` (the SQLite file ``PROCESS_DB``, the cache key prefix
``PROCESS_KEY_PREFIX``), plus the broker: ``WORKER_BROKER_URL``, the queue ``WORKER_QUEUE`` and,
for a Redis broker, ``WORKER_BROKER_PREFIX``: kombu's ``global_keyprefix``, so every broker key
of one test (its queue, and the unacked index that visibility-timeout restores scan) is its
own and another test's unacknowledged messages are never restored by these workers.
"""

import os

from tests.settings_process import *  # noqa: F403

CACHE_INVALIDATION = {
    "TRANSPORT": "celery",
    "CELERY_QUEUE": os.environ["WORKER_QUEUE"],
    # Two deliveries to workers that died; the third delivery is dead-lettered.
    "MAX_DELIVERIES": 2,
    # Below the visibility timeout (system check cache_invalidation.E013).
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 1,
    "RETRY_JITTER": False,
    "MAX_RETRIES": int(os.environ.get("WORKER_MAX_RETRIES", "8")),
    "METRICS_FLUSH_INTERVAL": float(os.environ.get("WORKER_METRICS_FLUSH_INTERVAL", "1.0")),
}

if os.environ.get("WORKER_SOCKET_TIMEOUT"):  # a cache that times out sooner than the suite's
    _timeout = float(os.environ["WORKER_SOCKET_TIMEOUT"])
    CACHES["default"]["OPTIONS"] = {  # noqa: F405
        "SOCKET_CONNECT_TIMEOUT": _timeout, "SOCKET_TIMEOUT": _timeout}

CELERY_BROKER_URL = os.environ["WORKER_BROKER_URL"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["WORKER_QUEUE"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# No pidbox queues or keys left behind by a killed worker.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith("redis"):
    # A message delivered to a worker that died without acknowledging it stays in the unacked
    # index until it is older than visibility_timeout; kombu's restore sweep then puts it back
    # in the queue. Sweep every second (by default: every 10 x 10 s) so the next worker gets
    # it about 2-3 s after the first one took it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "global_keyprefix": os.environ["WORKER_BROKER_PREFIX"],
        "visibility_timeout": 2,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
else:
    # RabbitMQ requeues a dead consumer's unacknowledged message when its connection closes.
    CELERY_BROKER_TRANSPORT_OPTIONS = {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"sigkill": {"()": "tests.worker_app.SigkillOnApplying"}},
    "loggers": {
        "cache_invalidation": {"level": "DEBUG", "handlers": ["sigkill"], "propagate": True},
    },
}
