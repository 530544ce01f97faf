"""``manage.py consume_changes``: invalidate what rows' committed changes reach, from the WAL.

Reads the logical replication slot ``CHANGES_SLOT`` (see :mod:`cache_invalidation.changes`).
``--setup`` creates what is missing (publication, slot, ``REPLICA IDENTITY FULL``);
``--setup --dry-run`` prints that SQL and changes nothing. Without ``--setup``: one round with
``--once``, else rounds every ``--interval`` seconds until SIGTERM or CONTROL-C (a round in
progress finishes first, so the slot is never left ahead of what was published).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from ... import changes, consumer, pgoutput, replication
from ...batching import publish_now
from ...changeevents import truncate_tags
from ...conf import get_config
from ...events import InvalidationEvent


class Command(BaseCommand):
    help = (
        "Follow the PostgreSQL logical replication slot CHANGES_SLOT and invalidate what each "
        "committed change of a declared table reaches (raw SQL, psql, other services). "
        "--setup creates the publication and slot; --once runs one round. Exits 1 when the "
        "slot is missing or the database refuses, 2 on bad usage."
    )

    NOT_POSTGRES = (
        "CHANGES_DATABASE {alias!r} is a {vendor} database; consume_changes reads PostgreSQL "
        "logical replication only."
    )
    BAD_ALIAS = "CHANGES_DATABASE {alias!r} is not a database alias; choose one of: {choices}."
    WAL_LEVEL = (
        "wal_level is {level!r} on database {alias!r}; logical decoding needs wal_level = "
        "logical (set it in postgresql.conf and restart the server)."
    )
    NO_TABLES = "No declared model has a table: nothing to capture."
    SLOT_MISSING = (
        "The replication slot {slot!r} does not exist on database {alias!r}. Run manage.py "
        "consume_changes --setup; if it existed before (dropped, or lost in a failover), "
        "changes made meanwhile were never decoded: then run manage.py consume_changes "
        "--invalidate-all (see docs/operations.rst, 'Change data capture')."
    )
    SLOT_LOST = (
        "The replication slot {slot!r} on database {alias!r} has lost WAL it needs "
        "(max_slot_wal_keep_size was exceeded): drop it, run manage.py consume_changes "
        "--setup, then --invalidate-all (see docs/operations.rst, 'Change data capture')."
    )
    DATABASE_FAILED = "The database refused a round (the slot did not move): {error}"
    RETRYING = "Round failed, the slot did not move; retrying in {interval:g} s: {error}"
    WOULD_INVALIDATE_ALL = (
        "Would invalidate the collection and coarse tags of {models} model(s) ({tags} tag(s))."
    )
    INVALIDATED_ALL = (
        "Published the collection and coarse tags of {models} model(s) ({tags} tag(s))."
    )
    ABSENT = (
        "Left out {count} name(s) that are no table in this database (views, or not migrated "
        "yet; run --setup again after migrating): {tables}"
    )
    WOULD_RUN = "Would run {count} statement(s):"
    IN_PLACE = "Publication {publication!r} and slot {slot!r} are in place ({tables} table(s))."
    RAN = "Ran {count} statement(s); publication {publication!r} and slot {slot!r} are in place."
    ROUND = (
        "{transactions} transaction(s), {events} event(s) published, {skipped} with nothing to "
        "invalidate; slot confirmed up to {confirmed_lsn}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--setup",
            action="store_true",
            help="Create the publication and slot and set REPLICA IDENTITY FULL where missing.",
        )
        parser.add_argument(
            "--invalidate-all",
            action="store_true",
            help="Invalidate what a TRUNCATE of every covered table would (after the slot was "
            "lost or recreated: changes made meanwhile were never decoded).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="With --setup: print the SQL; with --invalidate-all: count. Change nothing.",
        )
        parser.add_argument("--once", action="store_true", help="Run one round and exit.")
        parser.add_argument(
            "--interval",
            type=float,
            default=0.1,
            help="Seconds to wait after a round that found nothing (default 0.1: p99 commit "
            "-> invalidated about 0.15 s, see docs/benchmarks.rst).",
        )
        parser.add_argument("--json", action="store_true", help="Print JSON summaries.")

    def handle(self, *args: Any, **options: Any) -> None:
        config = get_config()
        alias = config["CHANGES_DATABASE"]
        if alias not in connections.settings:
            raise CommandError(
                self.BAD_ALIAS.format(alias=alias, choices=", ".join(connections.settings)),
                returncode=2,
            )
        if options["interval"] < 0:
            raise CommandError(
                f"--interval must be >= 0 seconds, got {options['interval']}.", returncode=2
            )
        if options["dry_run"] and not (options["setup"] or options["invalidate_all"]):
            raise CommandError("--dry-run goes with --setup or --invalidate-all.", returncode=2)
        if options["invalidate_all"]:
            self._invalidate_all(options)
            return
        try:
            slot = replication.check_name("CHANGES_SLOT", config["CHANGES_SLOT"])
            publication = replication.check_name(
                "CHANGES_PUBLICATION", config["CHANGES_PUBLICATION"]
            )
        except ValueError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        connection = connections[alias]
        if connection.vendor != "postgresql":
            raise CommandError(
                self.NOT_POSTGRES.format(alias=alias, vendor=connection.vendor), returncode=2
            )
        level = replication.setting(connection, "wal_level")
        if level != "logical":
            raise CommandError(self.WAL_LEVEL.format(level=level, alias=alias), returncode=1)
        if options["setup"]:
            self._setup(connection, slot, publication, options)
            return
        self._consume(connection, alias, slot, publication, options)

    def _invalidate_all(self, options: Any) -> None:
        maps = changes.table_maps()
        events = [
            InvalidationEvent(
                type=f"{t.policy.label}.resynced",
                entity_type=t.policy.label,
                tags=tuple(truncate_tags(t.policy)),
                metadata={"source": "changes", "reason": "invalidate-all"},
            )
            for t in maps.values()
        ]
        tags = len({tag for e in events for tag in e.tags})
        if options["dry_run"]:
            self.stdout.write(self.WOULD_INVALIDATE_ALL.format(models=len(events), tags=tags))
            return
        publish_now(events)
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(self.INVALIDATED_ALL.format(models=len(events), tags=tags))
            )

    def _setup(self, connection: Any, slot: str, publication: str, options: Any) -> None:
        tables = changes.tables()
        if not tables:
            raise CommandError(self.NO_TABLES, returncode=1)
        statements = replication.setup_statements(connection, slot, publication, tables)
        absent = replication.absent_tables(connection, tables)
        if absent and options["verbosity"] >= 1:
            self.stderr.write(self.ABSENT.format(count=len(absent), tables=", ".join(absent)))
        if options["dry_run"]:
            self.stdout.write(self.WOULD_RUN.format(count=len(statements)))
            for statement in statements:
                self.stdout.write(statement + ";")
            return
        if not statements:
            self.stdout.write(
                self.IN_PLACE.format(publication=publication, slot=slot, tables=len(tables))
            )
            return
        with connection.cursor() as cursor:
            for statement in statements:
                if options["verbosity"] >= 2:
                    self.stdout.write(statement + ";")
                cursor.execute(statement)
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    self.RAN.format(count=len(statements), publication=publication, slot=slot)
                )
            )

    def _consume(
        self, connection: Any, alias: str, slot: str, publication: str, options: Any
    ) -> None:
        stop: list[int] = []
        if not options["once"]:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda number, frame: stop.append(number))
        decoder = pgoutput.Decoder()
        limit = int(get_config()["CHANGES_BATCH"])
        while not stop:
            try:
                result = consumer.consume_round(
                    connection, alias, slot, publication, limit, decoder
                )
            except consumer.SlotMissing as exc:
                message = self.SLOT_LOST if exc.lost else self.SLOT_MISSING
                raise CommandError(message.format(slot=slot, alias=alias), returncode=1) from exc
            except pgoutput.ProtocolError as exc:
                raise CommandError(
                    f"Could not decode the slot {slot!r}: {exc}.", returncode=1
                ) from exc
            except DatabaseError as exc:
                if options["once"]:
                    raise CommandError(
                        self.DATABASE_FAILED.format(error=exc), returncode=1
                    ) from exc
                # The server restarted or the connection broke: the slot did not move, so the
                # next round starts where this one did.
                self.stderr.write(self.RETRYING.format(error=exc, interval=options["interval"]))
                connection.close()
                time.sleep(max(options["interval"], 1.0))
                continue
            if result.transactions or options["once"]:
                self._report(result, options)
            if options["once"]:
                return
            if not result.transactions:
                time.sleep(options["interval"])

    def _report(self, result: consumer.RoundResult, options: Any) -> None:
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        elif options["verbosity"] >= 1:
            summary = result.as_dict()
            summary["confirmed_lsn"] = summary["confirmed_lsn"] or "where it was"
            self.stdout.write(self.ROUND.format(**summary))
