"""``TRANSPORT = "outbox"``: events are rows written with the change (see :mod:`..outbox`).

Model writes and ``invalidate()`` stage their rows inside the transaction (:meth:`stage`) and
the batch is delivered once it committed (:meth:`committed`); :meth:`publish` is for events
that arrive outside one: it writes them as one batch (committed at once) and delivers it like
a committed transaction would.
"""

from __future__ import annotations

import uuid

from django.db import DEFAULT_DB_ALIAS, transaction

from .. import outbox
from ..events import InvalidationEvent


class OutboxTransport:
    """Events are rows: staged in the transaction that made them, delivered after it."""

    name = "outbox"

    def stage(self, event: InvalidationEvent, batch: uuid.UUID, using: str) -> None:
        outbox.write(event, batch, using)

    def committed(self, events: list[InvalidationEvent], batch: uuid.UUID, using: str) -> None:
        outbox.committed(events, batch, using)

    def publish(self, events: list[InvalidationEvent]) -> None:
        batch = uuid.uuid4()
        with transaction.atomic(using=DEFAULT_DB_ALIAS):
            for event in events:
                outbox.write(event, batch, DEFAULT_DB_ALIAS)
        outbox.committed(events, batch, DEFAULT_DB_ALIAS)
