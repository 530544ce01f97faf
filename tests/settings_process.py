"""Settings for tests that run Django in a child process (outbox crash test).

The child uses the SQLite file named by ``PROCESS_DB`` and the Redis key prefix named by
``PROCESS_KEY_PREFIX``, so parent and child see the same data.
"""

import os

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["PROCESS_DB"]},
}
CACHES["default"]["KEY_PREFIX"] = os.environ["PROCESS_KEY_PREFIX"]  # noqa: F405
CACHE_INVALIDATION = {"TRANSPORT": "outbox"}
