"""django-cacheops 7.x: ``@cached_as`` on the page's querysets; invalidation on save/delete."""

from . import *  # noqa: F403
from . import CACHE_URL, INSTALLED_APPS, TTL

BENCH_CONTENDER = "cacheops"
INSTALLED_APPS = [*INSTALLED_APPS, "cacheops"]
CACHEOPS_REDIS = CACHE_URL
# Nothing cached implicitly: the page uses @cached_as, cacheops' idiom for composed values.
CACHEOPS = {"bench.*": {"ops": (), "timeout": TTL}}
