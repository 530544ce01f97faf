"""Parsing and output helpers shared by the app's management commands."""

from __future__ import annotations

import math
import re
import sys
from datetime import timedelta
from typing import Any, TextIO

from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(value: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"7d"`` -> timedelta; CommandError otherwise."""
    match = _DURATION.match(value or "")
    if not match:
        raise CommandError(
            f"--older-than {value!r} is not a duration; write a number and a unit, such as "
            "90s, 15m, 2h or 7d.",
            returncode=2,
        )
    try:
        span = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        timezone.now() - span  # the cut-off the command computes must be a date
    except (OverflowError, ValueError) as exc:
        raise CommandError(
            f"--older-than {value!r} reaches before the year 1; give a shorter duration.",
            returncode=2,
        ) from exc
    return span


#: The largest ``--limit`` or ``--id`` taken: a PostgreSQL bigint.
MAX_INT = 2**63 - 1


def positive_int(option: str, value: int) -> int:
    """``value`` for ``option`` if it is between 1 and :data:`MAX_INT`; CommandError otherwise."""
    if not 0 < value <= MAX_INT:
        raise CommandError(
            f"{option} must be a positive number up to {MAX_INT}, got {value}.", returncode=2
        )
    return value


def seconds(option: str, value: float) -> float:
    """``value`` for ``option`` if it is a finite number of seconds above 0; CommandError
    otherwise (``time.sleep`` refuses negative numbers, and would never wake from inf)."""
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise CommandError(
            f"{option} must be a number of seconds above 0 and at most 86400, got {value}.",
            returncode=2,
        )
    return value


def database(value: str) -> str:
    """``value`` if it is a configured database alias; CommandError otherwise."""
    if value not in connections.settings:
        raise CommandError(
            f"--database {value!r} is not a database alias; choose one of: "
            f"{', '.join(connections.settings)}.",
            returncode=2,
        )
    return value


class Progress:
    """A one-line progress bar, drawn only when the stream is a terminal."""

    def __init__(self, total: int, stream: TextIO | Any, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        target = getattr(stream, "_out", stream)
        self.stream = target
        self.enabled = enabled and total > 0 and bool(getattr(target, "isatty", lambda: False)())

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
            f" ({self.failed} failed)"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
