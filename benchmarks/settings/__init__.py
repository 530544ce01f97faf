"""Settings shared by every contender; each module beside this one adds its own caching.

The run is placed by the environment, which ``python -m benchmarks run`` sets for itself:
``BENCH_DATABASE_URL`` (a PostgreSQL server; the database name is ``BENCH_DB_NAME``) and
``BENCH_REDIS_PORT`` (the private redis-server of this run, on 127.0.0.1).
"""

from __future__ import annotations

import os

import dj_database_url

SECRET_KEY = "benchmarks-only"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "benchmarks.shop",
]

_db = dj_database_url.parse(
    os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
)
_db["NAME"] = os.environ.get("BENCH_DB_NAME", "bench_manual")
DATABASES = {"default": _db}

REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
REDIS_HOST = "127.0.0.1"
#: db 0: the cache; db 1: the Celery broker; db 2: the benchmark's own bookkeeping.
CACHE_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
BROKER_URL_ = f"redis://{REDIS_HOST}:{REDIS_PORT}/1"
BOOKKEEPING_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/2"

#: Every contender caches for the same time.
TTL = 60

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "bench",
        "TIMEOUT": TTL,
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

#: Which idiom benchmarks.contenders uses; each contender module sets its own.
BENCH_CONTENDER = "nocache"
