"""The relay of the ``ours_outbox`` contender; it reports what it applied like the Celery
worker does (:mod:`benchmarks.celery_app`).

``python -m benchmarks run --contender ours_outbox`` starts one relay process,
``python -m benchmarks relay --interval S --limit N``, with the run's environment: it runs
this app's own ``manage.py relay_outbox --loop --interval S --limit N`` (through
``call_command``) after connecting ``invalidation_applied``. When it is about to poll it sets
``bench:ready``; after every applied batch it appends ``[time.time(), event ids...]`` to the
list ``bench:applied`` in the bookkeeping Redis database. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from contextlib import suppress
from typing import Any

from .tracking import APPLIED, READY

#: Seconds between polls of an empty outbox (the command's ``--interval``; it does not sleep
#: while rows are waiting). Overridden by ``BENCH_RELAY_INTERVAL``.
INTERVAL = 0.01
#: Rows per round (the command's default).
LIMIT = 500


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks relay")
    parser.add_argument("--interval", type=float,
                        default=float(os.environ.get("BENCH_RELAY_INTERVAL", INTERVAL)))
    parser.add_argument("--limit", type=int, default=LIMIT)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings.ours_outbox")
    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    from cache_invalidation import signals

    bookkeeping = redis.Redis.from_url(settings.BOOKKEEPING_URL)

    def applied(sender: Any, events: Any, **kwargs: Any) -> None:
        bookkeeping.rpush(APPLIED, json.dumps([time.time(), *(e.id for e in events)]))

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signals.invalidation_applied.connect(applied, dispatch_uid="bench.relay.applied", weak=False)
    signal.signal(signal.SIGTERM, stop)
    bookkeeping.set(READY, os.getpid())
    # Between rounds the command returns by itself; inside one, the open transaction rolls
    # back and its rows stay for the next relay.
    with suppress(KeyboardInterrupt):
        call_command("relay_outbox", loop=True, interval=args.interval, limit=args.limit,
                     verbosity=0)
    return 0
