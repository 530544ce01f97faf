"""No cache: every read goes to PostgreSQL."""

from . import *  # noqa: F403

BENCH_CONTENDER = "nocache"
