"""Settings of the demo shop served by several processes (``tests/test_local_processes.py``).

The shop's own settings (``testproject.settings``) with ``REDIS_URL`` set, so the local cache
is on as the demo turns it on, and:

- the cache under the key prefix ``LOCAL_KEY_PREFIX`` (the test's own);
- the database named by ``LOCAL_DATABASE_URL`` (the PostgreSQL test database) or else the
  SQLite file ``LOCAL_DB``: the servers, the writer and the test see the same rows;
- invalidation inline (``sync``): the writer has applied it when ``save()`` returns;
- ``LOCAL_CACHE=off`` in the environment turns the local cache off (a benchmark's baseline);
- :func:`tests.local_support.served_by` first in the middleware: each response says which
  process served it and which announcement its local cache had applied when the request began.
"""

import os

import dj_database_url

from testproject.settings import *  # noqa: F403
from testproject.settings import CACHE_INVALIDATION, CACHES, MIDDLEWARE

assert CACHE_INVALIDATION.get("LOCAL_CACHE"), "REDIS_URL must be set: the demo's local cache"

DEBUG = False
if os.environ.get("LOCAL_DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["LOCAL_DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["LOCAL_DB"],
            "OPTIONS": {"timeout": 20},
        }
    }
CACHES["default"]["KEY_PREFIX"] = os.environ["LOCAL_KEY_PREFIX"]
CACHES["default"]["OPTIONS"] = {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2}
CACHE_INVALIDATION = {**CACHE_INVALIDATION, "TRANSPORT": "sync"}
if os.environ.get("LOCAL_CACHE") == "off":  # the baseline of `python -m benchmarks local`
    CACHE_INVALIDATION["LOCAL_CACHE"] = None
MIDDLEWARE = ["tests.local_support.served_by", *MIDDLEWARE]
LOGGING = {"version": 1, "disable_existing_loggers": False}
