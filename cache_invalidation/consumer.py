"""The consumer's rounds: peek the slot, publish each transaction, then advance the slot.

:func:`consume_round` is what ``manage.py consume_changes`` runs once (``--once``) or in a
loop. Order within a round, the whole at-least-once argument:

1. read the flushed WAL position ``L`` (every transaction committed before it is decodable);
2. peek the transactions that committed before ``L`` (at most about ``CHANGES_BATCH``
   messages, whole transactions only);
3. publish each transaction's events as one batch (:func:`.batching.publish_now`);
4. advance the slot to the end of the last published transaction, or to ``L`` when the peek
   was not cut short (so WAL of tables outside the publication is released too).

A failure or a kill before 4 leaves the slot where it was: the next round publishes the same
transactions again. A transport failure is not an exception here: transports dead-letter what
they cannot deliver (see :mod:`.transports`), and a dead letter is replayable, not lost.
The heartbeat (:func:`heartbeat`) is written to the invalidation cache after each round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.core.cache import caches

from . import batching, changeevents, changes, pgoutput, replication
from .conf import get_config
from .logfields import log_extra

logger = logging.getLogger("cache_invalidation")

HEARTBEAT_KEY = "ci:changes:heartbeat:{slot}"


@dataclass
class RoundResult:
    transactions: int = 0
    skipped: int = 0  # transactions with no change of a covered table left to invalidate
    events: int = 0
    messages: int = 0
    confirmed_lsn: str | None = None
    last_commit_at: float | None = None
    #: Seconds from the commit of the oldest transaction this round published to the end of
    #: the round (0 when it published none): how far behind the consumer was.
    lag_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SlotMissing(RuntimeError):
    """The slot does not exist (never set up, dropped, or lost in a failover), or ``lost``:
    it exists but PostgreSQL removed WAL it needed (``max_slot_wal_keep_size``)."""

    def __init__(self, slot: str, lost: bool = False) -> None:
        super().__init__(slot)
        self.lost = lost


def consume_round(
    connection: Any,
    using: str,
    slot: str,
    publication: str,
    limit: int,
    decoder: pgoutput.Decoder | None = None,
) -> RoundResult:
    """One peek -> publish -> advance round (see the module docstring)."""

    info = replication.slot_info(connection, slot)
    if info is None:
        raise SlotMissing(slot)
    if info["wal_status"] == "lost":
        raise SlotMissing(slot, lost=True)
    decoder = decoder or pgoutput.Decoder()
    decoder.current = None  # a peek always starts at a transaction boundary
    result = RoundResult()
    upto = replication.flush_lsn(connection)
    messages = replication.peek(connection, slot, publication, upto, limit)
    result.messages = len(messages)
    maps = changes.table_maps()
    last_end = 0
    oldest: float | None = None
    for transaction in changes.transactions(decoder, messages):
        result.transactions += 1
        events = changeevents.events_for(transaction, maps, using, connection)
        if events:
            batching.publish_now(events)
            result.events += len(events)
        else:
            result.skipped += 1
        last_end = transaction.end_lsn
        if transaction.committed_at is not None:
            result.last_commit_at = transaction.committed_at.timestamp()
            oldest = result.last_commit_at if oldest is None else oldest
    target = last_end if len(messages) >= limit else max(last_end, upto)
    if target:
        info = replication.slot_info(connection, slot) or {}
        confirmed = pgoutput.parse_lsn(info.get("confirmed_flush_lsn") or "0/0")
        if target > confirmed:
            replication.advance(connection, slot, target)
            result.confirmed_lsn = pgoutput.lsn_text(target)
    if result.events:
        logger.debug(
            "cache_invalidation: published %d event(s) of %d transaction(s) from slot %s",
            result.events,
            result.transactions,
            slot,
            extra=log_extra(stage="changes"),
        )
    if oldest is not None:
        result.lag_seconds = round(max(0.0, time.time() - oldest), 3)
    heartbeat(slot, result)
    return result


def heartbeat(slot: str, result: RoundResult) -> None:
    """Record that a round finished (never raises: a cache outage is reported elsewhere)."""

    config = get_config()
    try:
        caches[config["CACHE_ALIAS"]].set(
            HEARTBEAT_KEY.format(slot=slot),
            {"at": time.time(), **result.as_dict()},
            timeout=int(config["MAX_TTL"]),
        )
    except Exception:  # the status reports a missing or old heartbeat
        logger.warning("cache_invalidation: could not write the consumer heartbeat", exc_info=True)


def last_heartbeat(slot: str) -> dict[str, Any] | None:
    """What the last round on ``slot`` recorded (``{"at": seconds since the epoch, ...}``),
    or None if no round finished within ``MAX_TTL``."""

    value = caches[get_config()["CACHE_ALIAS"]].get(HEARTBEAT_KEY.format(slot=slot))
    return value if isinstance(value, dict) else None
