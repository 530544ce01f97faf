"""One transaction, one batch: collect events until commit, publish them together after it.

Each event registers a marker with ``transaction.on_commit(using=alias, robust=True)``, so
Django's own bookkeeping drops the markers of a rolled-back savepoint or transaction. A single
flusher per transaction is kept at the end of the connection's commit hooks; it runs after the
markers and publishes, as one batch, exactly the events whose markers ran. Outside a transaction
(autocommit) an event is published at once: the write has already committed.

Keeping the flusher last is the one place that touches ``connection.run_on_commit`` (a list of
``(savepoint ids, callable, robust)`` entries since Django 4.2): it copies our own entry to the
end and leaves an inert entry in its old place, so no other entry changes or moves.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.db import connections, transaction
from django.db.transaction import TransactionManagementError

from .events import InvalidationEvent
from .pending import ATTR, Marker, next_seq

logger = logging.getLogger("cache_invalidation")


class Batch:
    def __init__(self, alias: str, outbox: bool = False) -> None:
        self.alias = alias
        self.id = uuid.uuid4()
        self.outbox = outbox
        self.entries: list[tuple[InvalidationEvent, Callable[[], None] | None]] = []
        self.seqs: list[int] = []  # when each entry was emitted (see reads_uncommitted)
        self.committed: list[int] = []

    def confirm(self, index: int) -> None:
        self.committed.append(index)

    def flush(self) -> None:
        connection = connections[self.alias]
        if getattr(connection, ATTR, None) is self:
            delattr(connection, ATTR)
        done = [self.entries[i] for i in sorted(set(self.committed))]
        if not done:
            return
        for _, after_commit in done:
            if after_commit is not None:
                after_commit()
        if self.outbox:
            from . import outbox

            outbox.committed([event for event, _ in done], self.id, self.alias)
        else:
            publish_now([event for event, _ in done])


def publish_now(events: list[InvalidationEvent]) -> None:
    from .conf import get_config
    from .events import split_oversized
    from .transports import get_transport

    # An event over MAX_EVENT_BYTES would be refused by the worker: publish it in parts.
    limit = int(get_config()["MAX_EVENT_BYTES"])
    get_transport().publish([part for e in coalesce(events) for part in split_oversized(e, limit)])


def coalesce(events: list[InvalidationEvent]) -> list[InvalidationEvent]:
    """Merge events about the same entity and kind into one, tags and keys deduplicated."""
    merged: dict[tuple[str, str, str], InvalidationEvent] = {}
    order: list[tuple[str, str, str]] = []
    for event in events:
        ident = (event.type, event.entity_type, event.entity_id)
        if event.type == "manual" or not event.entity_id:
            ident = (event.type, event.entity_type, event.id)
        previous = merged.get(ident)
        if previous is None:
            merged[ident] = event
            order.append(ident)
            continue
        merged[ident] = InvalidationEvent(
            id=previous.id,
            type=previous.type,
            entity_type=previous.entity_type,
            entity_id=previous.entity_id,
            timestamp=previous.timestamp,
            correlation_id=previous.correlation_id,
            tags=tuple(dict.fromkeys((*previous.tags, *event.tags))),
            keys=tuple(dict.fromkeys((*previous.keys, *event.keys))),
            changed_fields=tuple(dict.fromkeys((*previous.changed_fields, *event.changed_fields))),
            metadata={**previous.metadata, **event.metadata},
        )
    return [merged[i] for i in order]


def emit(
    event: InvalidationEvent,
    using: str,
    after_commit: Callable[[], None] | None = None,
) -> None:
    """Publish ``event`` once the current transaction on ``using`` commits (now if none).

    ``after_commit`` runs just before publishing, only if the write committed (used to move an
    instance's remembered state forward). With ``TRANSPORT = "outbox"`` the event is also
    written, now, as an :class:`~cache_invalidation.models.OutboxEvent` row in the same
    transaction; after commit that batch is delivered at once when possible, and otherwise
    by ``manage.py relay_outbox``.
    """
    from .conf import get_config

    use_outbox = get_config()["TRANSPORT"] == "outbox"
    connection = connections[using]
    if not connection.in_atomic_block:
        if not connection.get_autocommit():
            raise TransactionManagementError(
                f"cache_invalidation cannot tell when a write on database {using!r} commits "
                "under manual transaction management (autocommit is off); wrap the writes in "
                "transaction.atomic() instead."
            )
        if after_commit is not None:
            after_commit()
        if use_outbox:
            from . import outbox

            batch_id = uuid.uuid4()
            outbox.write(event, batch_id, using)
            outbox.committed([event], batch_id, using)
        else:
            publish_now([event])
        return
    batch: Batch | None = getattr(connection, ATTR, None)
    hooks: list[Any] = connection.run_on_commit
    fresh = batch is None or not _keep_last(hooks, batch.flush)
    if fresh:
        # First event of this transaction, or the previous batch was rolled back whole
        # (its flusher is gone with its markers): start afresh.
        batch = Batch(using, outbox=use_outbox)
        setattr(connection, ATTR, batch)
    assert batch is not None
    if use_outbox:
        from . import outbox

        outbox.write(event, batch.id, using)
    index = len(batch.entries)
    batch.entries.append((event, after_commit))
    batch.seqs.append(next_seq())
    transaction.on_commit(Marker(batch, index), using=using, robust=True)
    if fresh:
        transaction.on_commit(batch.flush, using=using, robust=True)
    else:
        _keep_last(hooks, batch.flush)


def _keep_last(hooks: list[Any], flusher: Callable[[], None]) -> bool:
    """Keep ``flusher``'s entry at the end of ``hooks``; False if it is not there.

    The entry is copied to the end (same savepoint ids, so it lives as long as the original)
    and its old place is taken by an inert entry rather than removed: every other entry keeps
    its index. That matters to code that slices the list, like ``TestCase``'s
    ``captureOnCommitCallbacks()``: it runs the entries added after it started, and a marker
    must not slide below that point because our flusher moved from before it."""
    for position in range(len(hooks) - 1, -1, -1):
        entry = hooks[position]
        if entry[1] == flusher:
            if position != len(hooks) - 1:
                hooks.append(entry)
                hooks[position] = (entry[0], _moved, *entry[2:])
            return True
    return False


def _moved() -> None:
    """Where a batch's flusher was before it moved to the end of the commit hooks."""
