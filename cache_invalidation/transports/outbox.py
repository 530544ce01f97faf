"""``TRANSPORT = "outbox"``: events are rows written with the change (see :mod:`..outbox`).

Model writes and ``invalidate()`` write their rows themselves, inside the transaction; this
transport's :meth:`publish` is for events that arrive outside one: it writes them as one batch
(committed at once) and delivers it like a committed transaction would.
"""

from __future__ import annotations

import uuid

from django.db import DEFAULT_DB_ALIAS, transaction

from .. import outbox
from ..events import InvalidationEvent


class OutboxTransport:
    name = "outbox"

    def publish(self, events: list[InvalidationEvent]) -> None:
        batch = uuid.uuid4()
        with transaction.atomic(using=DEFAULT_DB_ALIAS):
            for event in events:
                outbox.write(event, batch, DEFAULT_DB_ALIAS)
        outbox.committed(events, batch, DEFAULT_DB_ALIAS)
