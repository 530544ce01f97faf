"""The Celery app of the demo project.

Run a worker with ``celery -A testproject worker -l INFO`` (or let ``manage.py demo`` start one
in-process). Settings are read from Django's settings, prefixed ``CELERY_``; tasks are found in
each installed app's ``tasks`` module, which includes ``cache_invalidation.tasks``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

app = Celery("testproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
