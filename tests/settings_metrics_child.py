"""Settings for the child processes of ``tests/test_metrics.py`` that count metrics: the
suite's cache under the parent's key prefix (``PROCESS_KEY_PREFIX``), with the flush
interval ``CHILD_FLUSH_INTERVAL``."""

import os

from tests.settings_process import *  # noqa: F403

CACHE_INVALIDATION = {
    "TRANSPORT": "sync",
    "METRICS_FLUSH_INTERVAL": float(os.environ["CHILD_FLUSH_INTERVAL"]),
}
