"""django-cachalot 2.x: every ORM query of the shop's tables cached, tables invalidated on write."""

from . import *  # noqa: F403
from . import INSTALLED_APPS, TTL

BENCH_CONTENDER = "cachalot"
INSTALLED_APPS = [*INSTALLED_APPS, "cachalot"]
CACHALOT_TIMEOUT = TTL
CACHALOT_ONLY_CACHABLE_TABLES = frozenset({"bench_category", "bench_product", "bench_review"})
