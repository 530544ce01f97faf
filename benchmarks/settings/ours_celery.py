"""django-cache-invalidation, ``TRANSPORT = "celery"``: one task per committed batch, Redis
broker, one worker process (solo pool) started by the benchmark."""

import os

from . import *  # noqa: F403
from . import BROKER_URL_, INSTALLED_APPS

BENCH_CONTENDER = "ours_celery"
INSTALLED_APPS = [*INSTALLED_APPS, "cache_invalidation"]
CACHE_INVALIDATION = {"TRANSPORT": "celery", "MAIL_ADMINS": False}
# The events workload also measures one worker with storm control's rate limit off.
if os.environ.get("BENCH_MODEL_RATE_LIMIT"):
    CACHE_INVALIDATION["MODEL_RATE_LIMIT"] = int(os.environ["BENCH_MODEL_RATE_LIMIT"])
CELERY_BROKER_URL = BROKER_URL_
CELERY_TASK_DEFAULT_QUEUE = "bench"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
