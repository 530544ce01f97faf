"""``manage.py relay_outbox``: deliver the outbox rows that were not delivered at commit.

With ``--loop`` it is a long-running process that outlives outages: a round that fails because
the database (``DatabaseError``: the connection dropped, the server restarted, a backend
terminated) or the cache server (``redis`` connection and timeout errors) is unreachable is
logged as a warning, the broken database connection is closed (the next round opens a new one),
and the loop waits, doubling the wait from ``--interval`` up to :attr:`Command.MAX_BACKOFF`
seconds, then goes on. A cache failure inside one batch does not even fail the round: the batch
stays in the outbox with its backoff, as it does without ``--loop``. Without ``--loop``, an
outage exits 1 with the error. CONTROL-C or SIGTERM ends the loop with its summary, exit 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import outbox
from ..options import database, positive_int, seconds

logger = logging.getLogger("cache_invalidation")

#: Errors that mean "a server is unreachable now", not "this outbox is broken".
OUTAGES: tuple[type[BaseException], ...] = (
    DatabaseError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


class Command(BaseCommand):
    help = (
        "Deliver pending outbox rows (TRANSPORT = 'outbox') in skip-locked batches: once, or "
        "in a loop with --loop. Safe to run several at a time."
    )

    DELIVERED = (
        "Delivered {batches} batch(es), {events} event(s); {failed} failed, "
        "{dead_lettered} dead-lettered."
    )
    BACKLOG = "Backlog: {rows} row(s), oldest {age}."
    WOULD = "Would deliver up to {limit} of {rows} pending row(s)."
    OUTAGE = "Relay round failed ({error}); retrying in {delay:.1f}s."
    RECOVERED = "Relay rounds succeed again after {failures} failed round(s)."
    FAILED_ROUND = "The relay could not run: {error}"
    MAX_BACKOFF = 30.0

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--loop",
            action="store_true",
            help="Keep relaying until interrupted (CONTROL-C or SIGTERM).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="Seconds between rounds with --loop (default 1).",
        )
        parser.add_argument("--limit", type=int, default=500, help="Rows per round (default 500).")
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help="Database alias holding the outbox (default 'default').",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Show the backlog; deliver nothing."
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON summary.")

    def handle(self, *args: Any, **options: Any) -> None:
        limit = positive_int("--limit", options["limit"])
        seconds("--interval", options["interval"])
        using = database(options["database"])
        if options["dry_run"]:
            pending = outbox.backlog(using)
            if options["json"]:
                self.stdout.write(json.dumps({"dry_run": True, **pending}))
            else:
                self.stdout.write(self.WOULD.format(limit=limit, rows=pending["rows"]))
            return
        total = outbox.RelayResult()
        with _sigterm_as_interrupt(options["loop"]):
            failures = 0
            while True:
                try:
                    try:
                        result = outbox.relay(limit=limit, using=using)
                    except OUTAGES as exc:
                        if isinstance(exc, DatabaseError):
                            _close(using)
                        error = f"{type(exc).__name__}: {str(exc).strip()}"
                        if not options["loop"]:
                            raise CommandError(
                                self.FAILED_ROUND.format(error=error), returncode=1
                            ) from exc
                        failures += 1
                        delay = min(self.MAX_BACKOFF, options["interval"] * 2 ** (failures - 1))
                        message = self.OUTAGE.format(error=error, delay=delay)
                        logger.warning("cache_invalidation: relay_outbox: %s", message)
                        self.stderr.write(message)
                        time.sleep(delay)
                        continue
                    if failures:
                        message = self.RECOVERED.format(failures=failures)
                        logger.warning("cache_invalidation: relay_outbox: %s", message)
                        self.stderr.write(message)
                        failures = 0
                    for name in ("batches", "events", "failed", "dead_lettered"):
                        setattr(total, name, getattr(total, name) + getattr(result, name))
                    total.errors.extend(result.errors)
                    if options["verbosity"] >= 2 and (result.batches or result.failed):
                        self.stdout.write(self.DELIVERED.format(**result.as_dict()))
                    if not options["loop"]:
                        break
                    if not (result.batches or result.failed):
                        time.sleep(options["interval"])
                except KeyboardInterrupt:
                    break
        if options["json"]:
            try:
                left: dict[str, Any] = outbox.backlog(using)
            except DatabaseError as exc:  # stopped during an outage: say so, not a traceback
                left = {"rows": None, "oldest_age": None, "error": str(exc).strip()}
            self.stdout.write(json.dumps({**total.as_dict(), **left}))
        elif options["verbosity"] >= 1:
            self.stdout.write(self.style.SUCCESS(self.DELIVERED.format(**total.as_dict())))
        if total.failed and not options["loop"]:
            raise CommandError(
                "Some batches failed and stay in the outbox: " + "; ".join(total.errors),
                returncode=1,
            )


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
    """With ``--loop``, SIGTERM (what systemd, Kubernetes and supervisors send) stops the loop
    as CONTROL-C does: the round in progress is rolled back or finished, the summary printed,
    exit 0. Signal handlers can only be set from the main thread; elsewhere SIGTERM is left
    alone."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _close(using: str) -> None:
    """Drop the broken connection; the next query opens a new one."""
    # Closing a dead connection can fail too; it is gone either way.
    with contextlib.suppress(DatabaseError):
        connections[using].close()
