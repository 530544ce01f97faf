"""The structured fields every ``cache_invalidation`` log record carries.

Each record the app logs passes ``extra=log_extra(...)``, so a formatter or a JSON log handler
can rely on these attributes being present on every record of the ``"cache_invalidation"``
logger (empty or ``None`` when they do not apply):

``event_ids``
    ids of the events concerned (list of str).
``models``
    their model labels, sorted (``"shop.Product"``; ``"manual"`` for ``invalidate()``).
``stage``
    where it happened: ``publish``, ``apply``, ``decode``, ``escalate``, ``dead_letter``,
    ``replay``, ``relay``, ``prune``, ``store``, ``page_cache``, ``metrics`` (str or None).
``dead_letter``
    the primary key of the ``DeadLetter`` row concerned (int or None).

Some records add more: ``tags``, ``keys`` (applied), ``task_id`` (Celery), ``batch`` (outbox).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .events import InvalidationEvent

FIELDS = ("event_ids", "models", "stage", "dead_letter")


def log_extra(
    events: Iterable[Any] = (),
    *,
    stage: str | None = None,
    dead_letter: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The ``extra`` dict for a log call about ``events`` (raw payloads are skipped)."""

    decoded = [e for e in events if isinstance(e, InvalidationEvent)]
    return {
        "event_ids": [e.id for e in decoded],
        "models": sorted({e.entity_type or "manual" for e in decoded}),
        "stage": stage,
        "dead_letter": dead_letter,
        **more,
    }
