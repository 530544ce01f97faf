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

import itertools
import logging
import uuid
from collections.abc import Callable, Collection
from typing import Any

from django.db import connections, transaction
from django.db.transaction import TransactionManagementError

from .events import InvalidationEvent

logger = logging.getLogger("cache_invalidation")

_ATTR = "_cache_invalidation_batch"


class Batch:
    def __init__(self, alias: str, outbox: bool = False) -> None:
        self.alias = alias
        self.id = uuid.uuid4()
        self.outbox = outbox
        self.entries: list[tuple[InvalidationEvent, Callable[[], None] | None]] = []
        self.seqs: list[int] = []  # when each entry was emitted (see reads_uncommitted)
        self.committed: list[int] = []
        self.marked: set[str] = set()  # tables marked for consume_changes (see .changes.mark)

    def confirm(self, index: int) -> None:
        self.committed.append(index)

    def flush(self) -> None:
        connection = connections[self.alias]
        if getattr(connection, _ATTR, None) is self:
            delattr(connection, _ATTR)
        done = [self.entries[i] for i in sorted(set(self.committed))]
        if not done:
            return
        for _, after_commit in done:
            if after_commit is not None:
                after_commit()
        events = [event for event, _ in done if not left_to_changes(event, self.alias)]
        if not events:
            return
        if self.outbox:
            from . import outbox

            outbox.committed(events, self.id, self.alias)
        else:
            publish_now(events)


def left_to_changes(event: InvalidationEvent, alias: str) -> bool:
    """With ``CHANGES_ONLY``, a model event on ``CHANGES_DATABASE`` is published by
    ``consume_changes`` alone (it is still kept until commit: :func:`reads_uncommitted`)."""
    from .conf import get_config

    config = get_config()
    return (
        bool(config["CHANGES_ONLY"])
        and alias == config["CHANGES_DATABASE"]
        and event.type != "manual"
        and bool(event.entity_type)
    )


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
        if left_to_changes(event, using):
            return
        if use_outbox:
            from . import outbox

            batch_id = uuid.uuid4()
            outbox.write(event, batch_id, using)
            outbox.committed([event], batch_id, using)
        else:
            publish_now([event])
        return
    batch: Batch | None = getattr(connection, _ATTR, None)
    hooks: list[Any] = connection.run_on_commit
    fresh = batch is None or not _keep_last(hooks, batch.flush)
    if fresh:
        # First event of this transaction, or the previous batch was rolled back whole
        # (its flusher is gone with its markers): start afresh.
        batch = Batch(using, outbox=use_outbox)
        setattr(connection, _ATTR, batch)
    assert batch is not None
    if get_config()["CHANGES_MARK_TRANSACTIONS"]:
        from .changes import mark

        mark(connection, event, batch.marked)
    if use_outbox and not left_to_changes(event, using):
        from . import outbox

        outbox.write(event, batch.id, using)
    index = len(batch.entries)
    batch.entries.append((event, after_commit))
    batch.seqs.append(next(_sequence))
    transaction.on_commit(_Marker(batch, index), using=using, robust=True)
    if fresh:
        transaction.on_commit(batch.flush, using=using, robust=True)
    else:
        _keep_last(hooks, batch.flush)


class _Marker:
    __slots__ = ("batch", "index")

    def __init__(self, batch: Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def __call__(self) -> None:
        self.batch.confirm(self.index)


_sequence = itertools.count(1)
"""Numbers every event emitted inside a transaction, so a computation knows which came after
it started (see :func:`reads_uncommitted`)."""


def emitted_so_far() -> int:
    """A mark to pass to :func:`reads_uncommitted` once a computation is done."""
    return next(_sequence)


def reads_uncommitted(tags: Collection[str], since: int) -> bool:
    """Whether a value tagged ``tags`` may hold rows this thread's open transactions wrote.

    Rule: the value must not reach the shared cache if an uncommitted event of this thread
    (an event whose commit would invalidate it) names one of its tags. It is exactly as
    precise as invalidation itself: a value that no pending event would invalidate does not
    depend on what the transaction wrote, or that write's event would miss it after commit
    too. An event counts while its marker is in the connection's commit hooks (a rolled-back
    savepoint takes its markers, and its rows, with it), and also when it was emitted after
    ``since`` (the computation may have read a row before its savepoint rolled back).

    Events registered while only ``TestCase`` atomic blocks are open count as committed: the
    test's own transaction is the baseline its code runs on (Django's durability check treats
    those blocks the same way).
    """
    wanted = set(tags)
    for connection in connections.all(initialized_only=True):
        batch: Batch | None = getattr(connection, _ATTR, None)
        if batch is None:
            continue
        pending = _pending(connection, batch)
        for index, (event, _) in enumerate(batch.entries):
            counts = pending.get(index)
            if counts is None:  # rolled back, or its transaction ended since
                counts = batch.seqs[index] > since
            if counts and not wanted.isdisjoint(event.tags):
                return True
    return False


def _pending(connection: Any, batch: Batch) -> dict[int, bool]:
    """Entry index -> whether it is uncommitted work, for the entries whose markers are still
    in the connection's commit hooks (False for those a ``TestCase`` block registered)."""
    if not connection.in_atomic_block:
        return {}
    blocks = connection.atomic_blocks
    leading = 0
    while leading < len(blocks) and getattr(blocks[leading], "_from_testcase", False):
        leading += 1
    # savepoint_ids[i] belongs to atomic_blocks[i + 1]: the outermost block has no savepoint.
    baseline = set(connection.savepoint_ids[: leading - 1]) if leading else None
    found: dict[int, bool] = {}
    for sids, func, *_ in connection.run_on_commit:
        if isinstance(func, _Marker) and func.batch is batch:
            found[func.index] = baseline is None or not set(sids) <= baseline
    return found


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
