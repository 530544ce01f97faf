"""``manage.py replay_dead_letters``: apply dead-lettered invalidations again, now."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import deadletter
from ..options import Progress, duration, positive_int


class Command(BaseCommand):
    help = (
        "Replay pending dead letters: invalidate their tags and keys now, in this process. "
        "Rows that fail again stay pending with one more attempt; the command then exits 1."
    )

    NOTHING = "No pending dead letters match."
    WOULD_REPLAY = "Would replay {count} dead letter(s): {ids}."
    WOULD_TOUCH = "  #{pk}: {reason}, {attempts} attempt(s), tags {tags}, keys {keys}"
    REPLAYED = "Replayed {count} dead letter(s)."
    SKIPPED = "Skipped {count} dead letter(s) handled meanwhile by another replay."
    FAILED = "{count} dead letter(s) failed again and stay pending: {ids}."
    NEED_SELECTION = "Say which dead letters to replay: --id N (repeatable), --older-than or --all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id",
            dest="ids",
            type=int,
            action="append",
            metavar="N",
            help="Replay this dead letter (repeatable).",
        )
        parser.add_argument("--all", action="store_true", help="Replay every pending one.")
        parser.add_argument(
            "--older-than",
            metavar="DURATION",
            help="Only those that first failed longer ago, e.g. 15m, 2h, 7d.",
        )
        parser.add_argument(
            "--limit", type=int, metavar="N", help="Replay at most N (oldest first)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be replayed; change nothing."
        )
        parser.add_argument(
            "--json", action="store_true", help="Print a JSON summary on stdout instead of text."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ids = options["ids"]
        older_than = duration(options["older_than"]) if options["older_than"] else None
        if not (ids or options["all"] or older_than):
            raise CommandError(self.NEED_SELECTION, returncode=2)
        for pk in ids or ():
            positive_int("--id", pk)
        limit = options["limit"]
        if limit is not None:
            positive_int("--limit", limit)
        rows = deadletter.pending(ids=ids, older_than=older_than)
        if limit:
            rows = rows[:limit]
        selected = list(rows)
        verbosity = options["verbosity"]

        if options["dry_run"]:
            if options["json"]:
                self.stdout.write(
                    json.dumps(
                        {
                            "dry_run": True,
                            "would_replay": len(selected),
                            "ids": [r.pk for r in selected],
                        }
                    )
                )
                return
            if not selected:
                self.stdout.write(self.NOTHING)
                return
            self.stdout.write(
                self.WOULD_REPLAY.format(
                    count=len(selected), ids=", ".join(f"#{r.pk}" for r in selected)
                )
            )
            if verbosity >= 2:
                for r in selected:
                    self.stdout.write(
                        self.WOULD_TOUCH.format(
                            pk=r.pk, reason=r.reason, attempts=r.attempts, tags=r.tags, keys=r.keys
                        )
                    )
            return

        progress = Progress(len(selected), self.stderr, enabled=not options["json"])
        result = deadletter.replay(
            [r.pk for r in selected], progress=lambda pk, ok: progress.step(ok)
        )
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        else:
            if not selected:
                self.stdout.write(self.NOTHING)
            if result.replayed and verbosity >= 1:
                self.stdout.write(
                    self.style.SUCCESS(self.REPLAYED.format(count=len(result.replayed)))
                )
            if result.skipped and verbosity >= 1:
                self.stdout.write(self.SKIPPED.format(count=len(result.skipped)))
        if result.failed:
            ids_text = ", ".join(f"#{pk} ({error})" for pk, error in result.failed.items())
            raise CommandError(
                self.FAILED.format(count=len(result.failed), ids=ids_text), returncode=1
            )
