"""Settings for the change data capture tests: Django on the tests' own PostgreSQL cluster.

``CDC_DATABASE_URL`` names the private cluster (``wal_level = logical``) that
``tests/test_changes.py`` starts; the shared server keeps ``wal_level = replica``.
``PROCESS_KEY_PREFIX`` (set for a child process) shares the parent's Redis key prefix.
"""

import os

from tests.settings import *  # noqa: F403

DATABASES = {"default": dj_database_url.parse(os.environ["CDC_DATABASE_URL"])}  # noqa: F405
if os.environ.get("PROCESS_KEY_PREFIX"):
    CACHES["default"]["KEY_PREFIX"] = os.environ["PROCESS_KEY_PREFIX"]  # noqa: F405
CACHE_INVALIDATION = {
    "TRANSPORT": "sync",
    "CHANGES_MARK_TRANSACTIONS": os.environ.get("CDC_MARK") == "1",
    "CHANGES_ONLY": os.environ.get("CDC_ONLY") == "1",
    "CHANGES_BATCH": int(os.environ.get("CI_TEST_CHANGES_BATCH", "10000")),
    "STATUS_MAX_SLOT_LAG": int(os.environ.get("CI_TEST_MAX_SLOT_LAG", "100000000")),
    "STATUS_MAX_CHANGES_AGE": float(os.environ.get("CI_TEST_MAX_CHANGES_AGE", "3600")),
}
