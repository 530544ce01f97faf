"""Settings for the test suite: real Redis, real Celery broker, SQLite or PostgreSQL.

Environment: ``DATABASE_URL`` (unset: SQLite), ``TEST_REDIS_URL`` (cache, default Redis db 11),
``TEST_BROKER_URL`` (Celery broker, default Redis db 12). Every Redis key the suite writes
carries a per-run prefix and is deleted afterwards; the suite never flushes a database.
"""

from __future__ import annotations

import os
import uuid

import dj_database_url
import django

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
ROOT_URLCONF = "testproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "cache_invalidation",
    "testproject.shop",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"

if django.VERSION >= (6, 1):
    # Without MAILERS, Django 6.1 warns on every mail it sends (a default mailer goes away in
    # 2028); the test runner swaps each alias for the locmem backend.
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

_database_url = os.environ.get("DATABASE_URL")
# Lets two suites run at once against one PostgreSQL server (each creates its own database).
_suffix = os.environ.get("TEST_DB_SUFFIX", "")
if _database_url:
    DATABASES = {
        "default": {
            **dj_database_url.parse(_database_url),
            "TEST": {"NAME": "test_cache_invalidation" + _suffix},
        },
        "other": {
            **dj_database_url.parse(_database_url),
            "TEST": {"NAME": "test_cache_invalidation_other" + _suffix},
        },
    }
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }

RUN_ID = uuid.uuid4().hex[:10]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
KEY_PREFIX = f"citest-{RUN_ID}"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIX,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
    },
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": RUN_ID},
}

CACHE_INVALIDATION = {"TRANSPORT": "sync"}

CELERY_BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/12")
CELERY_TASK_DEFAULT_QUEUE = f"citest-{RUN_ID}"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"cache_invalidation": {"level": "DEBUG", "propagate": True}},
}
