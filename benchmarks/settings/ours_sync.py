"""django-cache-invalidation, ``TRANSPORT = "sync"``: applied in-process right after commit."""

from . import *  # noqa: F403
from . import INSTALLED_APPS

BENCH_CONTENDER = "ours_sync"
INSTALLED_APPS = [*INSTALLED_APPS, "cache_invalidation"]
CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAIL_ADMINS": False}
