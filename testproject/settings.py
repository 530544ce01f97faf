"""Settings of the demo shop. For development only: DEBUG is on and the secret key is public.

The environment picks the services:

``DATABASE_URL``
    Any URL ``dj_database_url`` understands (``postgres://postgres@127.0.0.1:5432/shop``).
    Unset: the SQLite file ``db.sqlite3`` next to ``manage.py``.
``REDIS_URL``
    Set (``redis://127.0.0.1:6379/0``): the cache is django-redis at that URL and Celery uses it
    as its broker (unless ``CELERY_BROKER_URL`` names another one), so invalidations travel
    through Celery; every cached read also keeps a local copy in the serving process
    (``LOCAL_CACHE`` with ``DEFAULT`` on), which the invalidations' announcements drop. Unset:
    an in-process LocMem cache, the ``sync`` transport and no local copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SECRET_KEY", "django-insecure-testproject-development-only")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "cache_invalidation",
    "testproject.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

REDIS_URL = os.environ.get("REDIS_URL", "")

CACHE_INVALIDATION = {"MAX_TTL": 600}

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "shop",
        }
    }
    # A broker is configured, so CACHE_INVALIDATION["TRANSPORT"] resolves to "celery".
    # Every get_or_set of the shop also keeps a local copy in this process (a page then
    # reports X-Cache: hit-local); Redis Pub/Sub keeps the copies of every process coherent.
    CACHE_INVALIDATION["LOCAL_CACHE"] = {"DEFAULT": True}
    CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "testproject",
        }
    }
    # A LocMem cache lives in one process, where a Celery worker could never reach it; say
    # "sync" explicitly so a CELERY_BROKER_URL left in the environment cannot select Celery.
    CACHE_INVALIDATION["TRANSPORT"] = "sync"

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "simple": {"format": "{levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "simple"},
    },
    "loggers": {
        "cache_invalidation": {
            "handlers": ["console"],
            # DEBUG also logs every applied batch.
            "level": os.environ.get("CACHE_INVALIDATION_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
