"""Events of open transactions: what is not committed yet, and who may read it.

:mod:`.batching` keeps, on each connection (attribute :data:`ATTR`), the batch of events the
current transaction emitted, and registers one :class:`Marker` per event in Django's commit
hooks, so a rolled-back savepoint takes its markers with it. This module owns those pieces that
readers need too: :func:`reads_uncommitted` tells ``TaggedCache`` whether a computed value may
hold rows written by a transaction that has not committed (and must then not be stored).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

from django.db import connections

ATTR = "_cache_invalidation_batch"
"""The connection attribute holding the open transaction's batch (see :mod:`.batching`)."""


class Marker:
    """A commit hook standing for one event of a batch: run on commit, it confirms the event;
    dropped with its savepoint, it never runs."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: Any, index: int) -> None:
        self.batch = batch
        self.index = index

    def __call__(self) -> None:
        self.batch.confirm(self.index)


_sequence = itertools.count(1)
"""Numbers every event emitted inside a transaction, so a computation knows which came after
it started (see :func:`reads_uncommitted`)."""


def next_seq() -> int:
    """The next number (increasing, process-wide): for an event emitted inside a transaction,
    and as the mark a computation takes when it starts, for :func:`reads_uncommitted`."""
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
        batch: Any = getattr(connection, ATTR, None)
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


def _pending(connection: Any, batch: Any) -> dict[int, bool]:
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
        if isinstance(func, Marker) and func.batch is batch:
            found[func.index] = baseline is None or not set(sids) <= baseline
    return found
