"""Signals users can connect to. Every one is sent with ``sender=None`` and keyword arguments.

- ``invalidation_published(events, transport)``: a committed batch was handed to the transport.
- ``invalidation_applied(events, deleted, duration)``: the tags and keys were dropped.
- ``invalidation_failed(events, error, stage, will_retry)``: publishing (``stage="publish"``) or
  applying (``stage="apply"``) failed; ``will_retry`` says whether it will be tried again.
- ``dead_lettered(dead_letter, events, error)``: a batch became a ``DeadLetter`` row with at
  least ``ALERT_AFTER_ATTEMPTS`` attempts (sent with ``sender=DeadLetter``).
"""

from django.dispatch import Signal

invalidation_published = Signal()
invalidation_applied = Signal()
invalidation_failed = Signal()
dead_lettered = Signal()
