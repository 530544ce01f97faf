"""``manage.py cache_invalidation_status``: is invalidation working? For people and monitors."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from ... import health
from ...metrics import NAMES


class Command(BaseCommand):
    help = (
        "Show the health of the cache, the broker and the database, events per model in the "
        "last hour and day, invalidation lag, dead letters and outbox backlog. Exits 0 when "
        "healthy, 1 when not (the reasons on stderr), 2 on bad usage."
    )

    HEALTH = "Health"
    CHECK = "  {name:<9} {state:<9} {detail}"
    TRANSPORT = "Transport: {transport}, cache {alias!r}"
    EVENTS = "Events, {window}"
    EVENTS_ROW = "  {model:<28}" + "".join(f" {{{n}:>{len(n)}}}" for n in NAMES)
    NO_EVENTS = "  no events"
    METRICS_UNAVAILABLE = "Metrics not available: {error}"
    LAG = "Lag (event made -> applied)"
    LAG_ROW = "  {window:<10} p50 {p50}  p95 {p95}  p99 {p99}  ({samples} sample(s))"
    NO_LAG = "  {window:<10} no samples"
    DEAD_LETTERS = "Dead letters: {pending} pending{oldest}{reasons}"
    OUTBOX = "Outbox: {rows} row(s){oldest}{used}"
    UNREADABLE = "{what}: not readable: {error}"
    LOCAL = (
        "Local cache: {subscribers} subscriber(s), hit rate {rate} ({hits} hits, {misses} "
        "misses), flushes: {flushes}"
    )
    CHANGES = (
        "Change data capture: slot {slot!r} on {alias!r}, {lag} byte(s) behind, "
        "last round {age} ago, lag {seconds}"
    )
    INDEX = "Tag index: {tag_sets} tag set(s), {members} member(s), {dead_members} dead"
    INDEX_SKIPPED = "Tag index: not scanned (add --index)"
    WARNING = "Warning: {warning}."
    EVICTION = (
        "  eviction  {state:<9} maxmemory-policy {policy}, maxmemory {maxmemory}, "
        "evicted_keys {evicted}"
    )
    EVICTION_UNREADABLE = "  eviction  -         not readable: {error}"
    HEALTHY = "Healthy."
    UNHEALTHY = "Unhealthy: {problems}."
    BAD_DATABASE = "--database {alias!r} is not a database alias; choose one of: {choices}."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the status as JSON on stdout instead of text.",
        )
        parser.add_argument(
            "--index",
            action="store_true",
            help="Also scan the tag index for its size (reads every tag set).",
        )
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            help="Database holding the dead letters and the outbox "
            "(default: where the router puts them).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        if using is not None and using not in connections.settings:
            raise CommandError(
                self.BAD_DATABASE.format(alias=using, choices=", ".join(connections.settings)),
                returncode=2,
            )
        status = health.status(include_index=options["index"], using=using)
        if options["json"]:
            self.stdout.write(json.dumps(status, default=str, indent=2))
        elif options["verbosity"] >= 1:
            self._table(status)
        if not options["json"] and options["verbosity"] >= 1:
            for warning in status.get("warnings", ()):
                self.stderr.write(self.style.WARNING(self.WARNING.format(warning=warning)))
        if not status["healthy"]:
            raise CommandError(
                self.UNHEALTHY.format(problems="; ".join(status["problems"])), returncode=1
            )
        if not options["json"] and options["verbosity"] >= 1:
            self.stdout.write(self.style.SUCCESS(self.HEALTHY))

    def _table(self, status: dict[str, Any]) -> None:
        write = self.stdout.write
        write(self.HEALTH)
        for name in ("cache", "broker", "database"):
            check = status[name]
            if name == "broker" and not check.get("used"):
                write(self.CHECK.format(name=name, state="-", detail=check["detail"]))
                continue
            state = self.style.SUCCESS("ok") if check["ok"] else self.style.ERROR("DOWN")
            write(self.CHECK.format(name=name, state=state, detail=_detail(name, check)))
            if name == "cache" and check.get("eviction"):
                self._eviction(check["eviction"])
        write(self.TRANSPORT.format(transport=status["transport"], alias=status["cache_alias"]))

        metrics = status["metrics"]
        if not metrics["available"]:
            write(self.METRICS_UNAVAILABLE.format(error=metrics["error"]))
        else:
            for window, title in (("hour", "last hour"), ("day", "last day")):
                write(self.EVENTS.format(window=title))
                rows = {
                    m: c[window] for m, c in metrics["per_model"].items() if any(c[window].values())
                }
                if not rows:
                    write(self.NO_EVENTS)
                    continue
                write(self.EVENTS_ROW.format(model="model", **{n: n for n in NAMES}))
                for model, counts in rows.items():
                    write(self.EVENTS_ROW.format(model=model, **counts))
                write(self.EVENTS_ROW.format(model="all models", **metrics["totals"][window]))
            write(self.LAG)
            for key, title in (("lag_ms", "last hour"), ("lag_ms_day", "last day")):
                lag = metrics[key]
                if not lag["samples"]:
                    write(self.NO_LAG.format(window=title))
                else:
                    write(
                        self.LAG_ROW.format(
                            window=title,
                            samples=lag["samples"],
                            **{p: f"{lag[p]:g} ms" for p in ("p50", "p95", "p99")},
                        )
                    )

        letters = status["dead_letters"]
        if letters["error"]:
            write(self.UNREADABLE.format(what="Dead letters", error=letters["error"]))
        else:
            reasons = ", ".join(f"{n} {r}" for r, n in letters["by_reason"].items())
            write(
                self.DEAD_LETTERS.format(
                    pending=letters["pending"],
                    oldest=_oldest(letters["oldest_age"]),
                    reasons=f" ({reasons})" if reasons else "",
                )
            )
        backlog = status["outbox"]
        if backlog["error"]:
            write(self.UNREADABLE.format(what="Outbox", error=backlog["error"]))
        else:
            write(
                self.OUTBOX.format(
                    rows=backlog["rows"],
                    oldest=_oldest(backlog["oldest_age"]),
                    used="" if backlog["used"] else " (transport not used)",
                )
            )
        found = status.get("changes") or {}
        if found.get("used") and found.get("error"):
            write(self.UNREADABLE.format(what="Change data capture", error=found["error"]))
        elif found.get("used") and found.get("slot_exists"):
            write(
                self.CHANGES.format(
                    slot=found["slot"],
                    alias=found["alias"],
                    lag=found["lag_bytes"],
                    age="-"
                    if found["heartbeat_age"] is None
                    else f"{found['heartbeat_age']:.1f} s",
                    seconds="-"
                    if found["lag_seconds"] is None
                    else f"{found['lag_seconds']:.1f} s",
                )
            )
        local = status.get("local") or {}
        if local.get("used") and local.get("error"):
            write(self.UNREADABLE.format(what="Local cache", error=local["error"]))
        elif local.get("used"):
            rate = local["hit_rate"]
            write(
                self.LOCAL.format(
                    subscribers=local["subscribers"],
                    rate="-" if rate is None else f"{rate:.1%}",
                    hits=local["hits"],
                    misses=local["misses"],
                    flushes=", ".join(f"{k} {v}" for k, v in local["flushes"].items()) or "none",
                )
            )
        index = status["index"]
        if index.get("scanned"):
            write(self.INDEX.format(**index))
        elif index.get("error"):
            write(self.UNREADABLE.format(what="Tag index", error=index["error"]))
        else:
            write(self.INDEX_SKIPPED)

    def _eviction(self, eviction: dict[str, Any]) -> None:
        if not eviction.get("readable"):
            self.stdout.write(self.EVICTION_UNREADABLE.format(error=eviction.get("error")))
            return
        if eviction["evicts"]:
            state = self.style.ERROR("EVICTS")
        elif eviction["evicted_keys"]:
            state = self.style.WARNING("evicted")
        else:
            state = self.style.SUCCESS("ok")
        self.stdout.write(
            self.EVICTION.format(
                state=state,
                policy=eviction["policy"],
                maxmemory=eviction["maxmemory"],
                evicted=eviction["evicted_keys"],
            )
        )


def _detail(name: str, check: dict[str, Any]) -> str:
    extra = []
    if name == "cache" and check.get("server_version"):
        extra.append(f"redis {check['server_version']}")
    if name == "database":
        extra.append(f"{check['alias']!r}" + (f", {check['vendor']}" if check["vendor"] else ""))
    if name == "broker" and check.get("url"):
        extra.append(str(check["url"]))
    if check.get("latency_ms") is not None:
        extra.append(f"{check['latency_ms']:g} ms")
    return f"{check['detail']} ({', '.join(extra)})" if extra else str(check["detail"])


def _oldest(age: float | None) -> str:
    return "" if age is None else f", oldest {age:.0f} s"
