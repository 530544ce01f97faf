"""Signals users can connect to. Every one is sent with ``sender=None`` and keyword arguments.

- ``invalidation_published(events, transport)``: a committed batch was handed to the transport
  (with ``sync``: once it was applied, or failed and was dead-lettered).
- ``invalidation_applied(events, deleted, duration)``: the tags and keys were dropped.
- ``invalidation_failed(events, error, stage, will_retry)``: publishing (``stage="publish"``) or
  applying (``stage="apply"``) failed; ``will_retry`` says whether it will be tried again.
- ``dead_lettered(dead_letter, events, error)``: a batch became a ``DeadLetter`` row with at
  least ``ALERT_AFTER_ATTEMPTS`` attempts (sent with ``sender=DeadLetter``).

The app sends each one with :func:`send`, after the work it reports: a receiver that raises is
logged at ERROR with its traceback and never changes what happens to the batch (it is not
retried, dead-lettered or dropped because of it, and ``save()`` does not raise).
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("cache_invalidation")

invalidation_published = Signal()
invalidation_applied = Signal()
invalidation_failed = Signal()
dead_lettered = Signal()

_NAMES = {
    id(invalidation_published): "invalidation_published",
    id(invalidation_applied): "invalidation_applied",
    id(invalidation_failed): "invalidation_failed",
    id(dead_lettered): "dead_lettered",
}


def send(signal: Signal, sender: Any = None, **kwargs: Any) -> None:
    """Send ``signal`` to every receiver; log (never raise) what a receiver raised."""
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, BaseException):
            logger.error(
                "cache_invalidation: a receiver of %s raised (ignored: the batch is not "
                "affected): %s.%s: %r",
                _NAMES.get(id(signal), "a signal"),
                getattr(receiver, "__module__", "?"),
                getattr(receiver, "__qualname__", repr(receiver)),
                result,
                exc_info=(type(result), result, result.__traceback__),
            )
