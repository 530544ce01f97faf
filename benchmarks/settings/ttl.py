"""TTL-only: django-redis ``cache.get_or_set(key, compute, 60)``; writes invalidate nothing."""

from . import *  # noqa: F403

BENCH_CONTENDER = "ttl"
