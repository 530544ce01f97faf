"""Settings for tests that run Django in a child process (outbox crash test).

The child uses the SQLite file named by ``PROCESS_DB`` (or, when ``PROCESS_DATABASE_URL`` is
set, that database: the reliability suite points a worker at PostgreSQL through a proxy) and
the Redis key prefix named by ``PROCESS_KEY_PREFIX``, so parent and child see the same data.
"""

import os

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["PROCESS_DB"]},
}
if os.environ.get("PROCESS_DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["PROCESS_DATABASE_URL"])}  # noqa: F405
CACHES["default"]["KEY_PREFIX"] = os.environ["PROCESS_KEY_PREFIX"]  # noqa: F405
CACHE_INVALIDATION = {"TRANSPORT": "outbox"}
