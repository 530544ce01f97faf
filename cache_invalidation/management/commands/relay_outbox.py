"""``manage.py relay_outbox``: deliver the outbox rows that were not delivered at commit."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from ... import outbox
from ..options import database, positive_int, seconds


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
        while True:
            result = outbox.relay(limit=limit, using=using)
            for name in ("batches", "events", "failed", "dead_lettered"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            total.errors.extend(result.errors)
            if options["verbosity"] >= 2 and (result.batches or result.failed):
                self.stdout.write(self.DELIVERED.format(**result.as_dict()))
            if not options["loop"]:
                break
            try:
                if not (result.batches or result.failed):
                    time.sleep(options["interval"])
            except KeyboardInterrupt:
                break
        if options["json"]:
            self.stdout.write(json.dumps({**total.as_dict(), **outbox.backlog(using)}))
        elif options["verbosity"] >= 1:
            self.stdout.write(self.style.SUCCESS(self.DELIVERED.format(**total.as_dict())))
        if total.failed and not options["loop"]:
            raise CommandError(
                "Some batches failed and stay in the outbox: " + "; ".join(total.errors),
                returncode=1,
            )
