"""Parsing and output helpers shared by the app's management commands."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from typing import Any, TextIO

from django.core.management.base import CommandError

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
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


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
