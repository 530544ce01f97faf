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

from .changes import mark
from .conf import get_config
from .events import InvalidationEvent
from .pending import ATTR, Marker, next_seq
from .transports import Transport, get_transport, prepared

logger = logging.getLogger("cache_invalidation")


class Batch:
    """The events one transaction on ``alias`` emitted, for ``transport`` once it commits."""

    def __init__(self, alias: str, transport: Transport) -> None:
        self.alias = alias
        self.id = uuid.uuid4()
        self.transport = transport
        self.entries: list[tuple[InvalidationEvent, Callable[[], None] | None]] = []
        self.seqs: list[int] = []  # when each entry was emitted (see reads_uncommitted)
        self.committed: list[int] = []
        self.marked: set[str] = set()  # tables marked for consume_changes (see .changes.mark)

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
        events = [event for event, _ in done if not left_to_changes(event, self.alias)]
        if events:
            self.transport.committed(events, self.id, self.alias)


def left_to_changes(event: InvalidationEvent, alias: str) -> bool:
    """With ``CHANGES_ONLY``, a model event on ``CHANGES_DATABASE`` is published by
    ``consume_changes`` alone (it is still kept until commit for
    :func:`.pending.reads_uncommitted`)."""
    config = get_config()
    return (
        bool(config["CHANGES_ONLY"])
        and alias == config["CHANGES_DATABASE"]
        and event.type != "manual"
        and bool(event.entity_type)
    )


def publish_now(events: list[InvalidationEvent]) -> None:
    """Publish committed ``events`` through the configured transport, merged and split to
    ``MAX_EVENT_BYTES`` (for producers outside a transaction's batch)."""
    transport = get_transport()
    transport.publish(prepared(events))


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
    transport = get_transport()
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
        if left_to_changes(event, using):
            return
        batch_id = uuid.uuid4()
        transport.stage(event, batch_id, using)  # the write has committed: so does this
        transport.committed([event], batch_id, using)
        return
    batch: Batch | None = getattr(connection, ATTR, None)
    hooks: list[Any] = connection.run_on_commit
    fresh = batch is None or not _keep_last(hooks, batch.flush)
    if fresh:
        # First event of this transaction, or the previous batch was rolled back whole
        # (its flusher is gone with its markers): start afresh.
        batch = Batch(using, transport)
        setattr(connection, ATTR, batch)
    assert batch is not None
    if get_config()["CHANGES_MARK_TRANSACTIONS"]:
        mark(connection, event, batch.marked)
    if not left_to_changes(event, using):
        batch.transport.stage(event, batch.id, using)
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
