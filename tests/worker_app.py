"""A Celery app for the subprocess workers that ``tests/test_worker_loss.py`` kills.

Run as ``python -m celery -A tests.worker_app worker --pool=solo -Q <queue> ...`` with the
environment ``tests/settings_worker.py`` reads (``PROCESS_DB``, ``PROCESS_KEY_PREFIX``,
``WORKER_BROKER_URL``, ``WORKER_QUEUE``, ``WORKER_BROKER_PREFIX``) and ``WORKER_MARKER_FILE``.
``django.setup()`` runs through Celery's Django fixup when the worker boots, after this module
is imported, so the settings' ``LOGGING`` can name :class:`SigkillOnApplying` below.

This is a test device, not production code: the handler kills its own worker process.
"""

from __future__ import annotations

import logging
import os
import signal

from celery import Celery

APPLYING = "cache_invalidation: applying "


class SigkillOnApplying(logging.Handler):
    """SIGKILL this worker at the "applying" record of a batch tagged ``poison`` or ``die-once``.

    That record is logged after the delivery was counted and before anything is invalidated or
    acknowledged: the worker dies in the middle of the task, as an OOM kill would leave it.
    ``poison`` kills every time; ``die-once`` only the first time (the marker file
    ``WORKER_MARKER_FILE`` is created, atomically, before the kill).
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not (isinstance(record.msg, str) and record.msg.startswith(APPLYING)):
            return
        # args: (events, attempt, delivery, sorted tags, sorted keys)
        args = record.args if isinstance(record.args, tuple) else ()
        tags = args[3] if len(args) > 3 and isinstance(args[3], list) else []
        if "poison" in tags:
            self.die(record)
        elif "die-once" in tags:
            try:
                with open(os.environ["WORKER_MARKER_FILE"], "x"):
                    pass
            except FileExistsError:
                return
            self.die(record)

    def die(self, record: logging.LogRecord) -> None:
        # Straight to the log file: this record never reaches Celery's handler on the root.
        os.write(2, f"worker_app: SIGKILL on: {record.getMessage()}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings_worker")

app = Celery("worker_loss")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
