"""A small shop wired the way a user would wire django-cache-invalidation.

The Celery app is imported here so that ``shared_task`` (``cache_invalidation.apply_batch``)
binds to it whenever Django starts, as Celery's Django guide recommends.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
