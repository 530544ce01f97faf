"""``manage.py invalidate_cache``: invalidate tags, keys, a row or a key pattern by hand."""

from __future__ import annotations

import getpass
import json
import logging
import sys
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from ... import keypatterns, manual
from ...models import ManualInvalidation

Status = ManualInvalidation.Status
logger = logging.getLogger("cache_invalidation")


class Command(BaseCommand):
    help = (
        "Invalidate cache entries by hand: tags (--tag), plain keys (--key), what a save of one "
        "row would invalidate (--model app.Model --pk N), and keys matching a glob (--pattern, "
        "previewed and confirmed). Tags and keys go through the configured transport unless "
        "--sync. Exits 1 when the cache or broker failed, 2 on bad usage."
    )
    stealth_options = ("stdin",)

    MODEL_AND_PK = "--model and --pk go together: name the model (app_label.Model) and the key."
    WOULD = "Would invalidate {tags} tag(s), {keys} key(s){matches}."
    WOULD_MATCH = "; pattern {pattern!r} matches {matched} key(s)"
    WOULD_LIST = "  {kind}: {items}"
    CACHE_DOWN = "Could not count the keys matching {pattern!r}: {error}"
    NEED_NO_INPUT = (
        "Deleting the {matched} key(s) matching {pattern!r} needs confirmation, and stdin is "
        "not a terminal: pass --no-input to delete without asking."
    )
    CONFIRM = "Delete {matched} key(s) matching {pattern!r} from cache {alias!r}? [y/N] "
    CANCELLED = "Cancelled; nothing was invalidated."
    APPLIED = "Invalidated {tags} tag(s) and {keys} key(s) {how}: {deleted} entries deleted."
    PUBLISHED = (
        "Published {tags} tag(s) and {keys} key(s) through the {transport!r} transport "
        "(event {event_id})."
    )
    RETRYING = "Its first delivery failed and will be retried: {error}"
    PATTERN_DELETED = "Deleted {count} key(s) matching {pattern!r}."
    FAILED = "Invalidation failed: {result}"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tag",
            dest="tags",
            action="append",
            default=[],
            metavar="TAG",
            help="Invalidate this tag (repeatable).",
        )
        parser.add_argument(
            "--key",
            dest="keys",
            action="append",
            default=[],
            metavar="KEY",
            help="Delete this plain cache key (repeatable).",
        )
        parser.add_argument(
            "--model",
            metavar="APP_LABEL.MODEL",
            help="With --pk: invalidate what a save of that row would.",
        )
        parser.add_argument("--pk", metavar="PK", help="Primary key of the --model row.")
        parser.add_argument(
            "--pattern",
            metavar="GLOB",
            help="Delete the cache keys matching this glob (* and ?), written "
            "without the cache's key prefix, e.g. 'product:*:page'.",
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="Invalidate tags and keys now, in this process, instead of "
            "publishing through the configured transport.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say what would be invalidated and how many keys the pattern "
            "matches; change nothing.",
        )
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="Delete pattern matches without asking.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print a JSON summary on stdout instead of text."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdin = options.get("stdin") or sys.stdin
        self.username = _os_user()
        raw = {
            "tags": options["tags"],
            "keys": options["keys"],
            "model": options["model"],
            "pk": options["pk"],
            "pattern": options["pattern"],
        }
        if (options["model"] is None) != (options["pk"] is None):
            self._refuse(raw, self.MODEL_AND_PK)
        if options["pattern"] is not None and not options["pattern"]:
            self._refuse(raw, str(keypatterns.EMPTY_PATTERN))
        try:
            plan = manual.plan(
                options["tags"],
                options["keys"],
                options["model"] or "",
                options["pk"],
                options["pattern"] or "",
            )
        except manual.ManualError as exc:
            self._refuse(raw, str(exc))
        pattern = plan.pattern
        if pattern is not None:
            try:
                preview = plan.look()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                manual.audit(
                    plan,
                    None,
                    source="command",
                    username=self.username,
                    dry_run=options["dry_run"],
                    status=Status.FAILED,
                    error=error,
                )
                raise CommandError(
                    self.CACHE_DOWN.format(pattern=pattern.pattern, error=error), returncode=1
                ) from exc
            assert preview is not None
            refusal = pattern.refusal(preview)
            if refusal:
                self._refuse(raw, refusal, plan)
        if options["dry_run"]:
            self._dry_run(plan, options)
            return
        matched = plan.preview.matched if plan.preview else 0
        if matched and not self._confirmed(plan, options):
            manual.audit(
                plan,
                None,
                source="command",
                username=self.username,
                status=Status.REFUSED,
                error=self.CANCELLED,
            )
            self.stdout.write(self.CANCELLED)
            return
        outcome = manual.execute(
            plan, sync=options["sync"], source="command", username=self.username
        )
        row = manual.audit(plan, outcome, source="command", username=self.username)
        if options["json"]:
            self.stdout.write(json.dumps(_summary(plan, outcome.status, row.pk, outcome)))
        elif outcome.ok and options["verbosity"] >= 1:
            for line, warn in self._lines(plan, outcome):
                self.stdout.write(self.style.WARNING(line) if warn else self.style.SUCCESS(line))
        if not outcome.ok:
            raise CommandError(self.FAILED.format(result=outcome.result), returncode=1)

    # -- parts -------------------------------------------------------------------------------
    def _refuse(
        self, raw: dict[str, Any], message: str, plan: manual.Plan | None = None
    ) -> NoReturn:
        try:
            manual.audit(
                plan,
                None,
                source="command",
                username=self.username,
                status=Status.REFUSED,
                error=message,
                raw=raw,
            )
        except DatabaseError as exc:  # the refusal is what the user needs to see
            logger.warning("cache_invalidation: audit row not written: %s", exc)
        raise CommandError(message, returncode=2)

    def _dry_run(self, plan: manual.Plan, options: dict[str, Any]) -> None:
        row = manual.audit(
            plan,
            None,
            source="command",
            username=self.username,
            dry_run=True,
            status=Status.PREVIEWED,
        )
        if options["json"]:
            self.stdout.write(json.dumps(_summary(plan, Status.PREVIEWED, row.pk)))
            return
        matches = ""
        if plan.pattern is not None and plan.preview is not None:
            matches = self.WOULD_MATCH.format(
                pattern=plan.pattern.pattern, matched=plan.preview.matched
            )
        self.stdout.write(
            self.WOULD.format(tags=len(plan.tags), keys=len(plan.keys), matches=matches)
        )
        if options["verbosity"] >= 2:
            for kind, items in (
                ("tags", plan.tags),
                ("keys", plan.keys),
                ("matching keys (sample)", plan.preview.sample if plan.preview else ()),
            ):
                if items:
                    self.stdout.write(self.WOULD_LIST.format(kind=kind, items=", ".join(items)))

    def _confirmed(self, plan: manual.Plan, options: dict[str, Any]) -> bool:
        assert plan.pattern is not None and plan.preview is not None
        if not options["interactive"]:
            return True
        isatty = getattr(self.stdin, "isatty", None)
        try:
            interactive = bool(isatty and isatty())
        except (OSError, ValueError):  # pytest's captured stdin, a closed stream
            interactive = False
        if not interactive:
            self._refuse(
                {},
                self.NEED_NO_INPUT.format(
                    matched=plan.preview.matched, pattern=plan.pattern.pattern
                ),
                plan,
            )
        self.stdout.write(
            self.CONFIRM.format(
                matched=plan.preview.matched, pattern=plan.pattern.pattern, alias=plan.pattern.alias
            ),
            ending="",
        )
        self.stdout.flush()
        answer = self.stdin.readline().strip().lower()
        return answer in ("y", "yes")

    def _lines(self, plan: manual.Plan, outcome: manual.Outcome) -> list[tuple[str, bool]]:
        """What was done, one line per part, each with whether it is a warning."""
        lines = []
        if plan.tags or plan.keys:
            counts = {"tags": len(plan.tags), "keys": len(plan.keys)}
            if outcome.status == Status.PUBLISHED:
                lines.append(
                    (
                        self.PUBLISHED.format(
                            **counts, transport=outcome.transport, event_id=outcome.event_id
                        ),
                        False,
                    )
                )
                if outcome.error:
                    lines.append((self.RETRYING.format(error=outcome.error), True))
            else:
                how = (
                    "now"
                    if outcome.transport == "now"
                    else f"through the {outcome.transport!r} transport"
                )
                deleted = (outcome.deleted or 0) - (outcome.pattern_deleted or 0)
                lines.append((self.APPLIED.format(**counts, how=how, deleted=deleted), False))
        if plan.pattern is not None:
            lines.append(
                (
                    self.PATTERN_DELETED.format(
                        count=outcome.pattern_deleted or 0, pattern=plan.pattern.pattern
                    ),
                    False,
                )
            )
        return lines


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return ""


def _summary(
    plan: manual.Plan, status: str, audit_id: int, outcome: manual.Outcome | None = None
) -> dict[str, Any]:
    return {
        "dry_run": outcome is None,
        "status": str(status),
        "tags": plan.tags,
        "keys": plan.keys,
        "model": plan.model or None,
        "pk": plan.pk or None,
        "pattern": plan.pattern_text or None,
        "matched": plan.preview.matched if plan.preview else None,
        "deleted": outcome.deleted if outcome else None,
        "pattern_deleted": outcome.pattern_deleted if outcome else None,
        "event_id": outcome.event_id if outcome else None,
        "transport": outcome.transport if outcome else None,
        "result": outcome.result if outcome else "",
        "error": outcome.error if outcome else "",
        "audit_id": audit_id,
    }
