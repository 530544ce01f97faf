"""Settings of the demo shop as the browser tests serve it (``tests/test_browser.py``).

The shop's own settings (``testproject.settings``: DEBUG on, so ``runserver`` serves the
admin's static files), with the SQLite file named by ``BROWSER_DB`` and the suite's Redis
(``TEST_REDIS_URL``, default db 11) under the key prefix ``BROWSER_KEY_PREFIX``: the server,
the ``manage.py shell`` steps of the tests and the dashboard share one cache and one metrics
store, and the tests delete every key under that prefix afterwards. Invalidation is inline
(``sync``): no worker to wait for.
"""

import os

from testproject.settings import *  # noqa: F403

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BROWSER_DB"]},
}
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11"),
        "KEY_PREFIX": os.environ["BROWSER_KEY_PREFIX"],
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
    }
}
CACHE_INVALIDATION = {"MAX_TTL": 600, "TRANSPORT": "sync"}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
