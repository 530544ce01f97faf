"""Decode PostgreSQL's built-in ``pgoutput`` logical decoding messages (protocol version 1).

Pure: bytes in, dataclasses out; no Django, no I/O. Each row that
``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', 'publication_names', ...,
'messages', 'true')`` returns holds one message; :class:`Decoder` turns them into
:class:`Transaction` objects, one per committed transaction, with every row change in commit
order. Column values stay as PostgreSQL's text output (``"7"``, ``"t"``, ``"12.50"``): the
caller converts them with the model fields (see :mod:`.changes`).

Message formats are those of the PostgreSQL 15 documentation, "Logical Replication Message
Formats". A message this module does not know raises :class:`ProtocolError` naming its type
byte: silently skipping one could skip a change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

#: A column whose value is TOASTed and unchanged by an UPDATE: pgoutput does not send it.
UNCHANGED = object()

_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


class ProtocolError(ValueError):
    """The message is not valid pgoutput protocol version 1."""


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[str, ...]


@dataclass
class Change:
    """One row change. ``old``/``new`` map column names to text (None for SQL NULL,
    :data:`UNCHANGED` for an unchanged TOASTed value); ``old`` holds only the replica identity
    columns unless the table has ``REPLICA IDENTITY FULL``, and is None when not sent."""

    kind: str  # "insert" | "update" | "delete" | "truncate"
    relation: Relation
    old: dict[str, object] | None = None
    new: dict[str, object] | None = None
    old_is_full: bool = False


@dataclass
class Transaction:
    xid: int
    commit_lsn: int = 0
    end_lsn: int = 0
    committed_at: datetime | None = None
    changes: list[Change] = field(default_factory=list)
    #: (prefix, content) of the transactional logical decoding messages it carries.
    messages: list[tuple[str, bytes]] = field(default_factory=list)


def lsn_text(lsn: int) -> str:
    """``0x16B3748`` -> ``"0/16B3748"``, the form PostgreSQL's ``pg_lsn`` type reads."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = str(text).partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"message ends after {len(self.data)} bytes, {n} more expected")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return int(value)

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("a string is not NUL-terminated")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def tuple(self, relation: Relation) -> dict[str, object]:
        count = self.int("!h")
        if count > len(relation.columns):
            raise ProtocolError(
                f"a tuple of {relation.namespace}.{relation.name} has {count} columns, "
                f"its Relation message names {len(relation.columns)}"
            )
        values: dict[str, object] = {}
        for name in relation.columns[:count]:
            kind = self.take(1)
            if kind == b"n":
                values[name] = None
            elif kind == b"u":
                values[name] = UNCHANGED
            elif kind == b"t":
                values[name] = self.take(self.int("!i")).decode("utf-8")
            else:
                raise ProtocolError(f"unknown tuple value kind {kind!r} (binary mode is not used)")
        return values


def _timestamp(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class Decoder:
    """Feed messages in order; complete transactions come out of :meth:`feed` at their Commit.

    Relations are remembered across calls (a new peek resends them, but a change is only
    decodable after its table's Relation message was seen).
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.current: Transaction | None = None

    def feed(self, data: bytes) -> Transaction | None:
        data = bytes(data)  # psycopg2 returns memoryview, psycopg 3 bytes
        if not data:
            raise ProtocolError("empty message")
        kind, reader = data[:1], _Reader(data)
        reader.pos = 1
        if kind == b"B":
            final_lsn, micros, xid = reader.int("!Q"), reader.int("!q"), reader.int("!I")
            self.current = Transaction(xid=xid, commit_lsn=final_lsn)
            self.current.committed_at = _timestamp(micros)
            return None
        if kind == b"R":
            oid, namespace, name = reader.int("!I"), reader.string(), reader.string()
            identity = chr(reader.int("!B"))
            columns = []
            for _ in range(reader.int("!h")):
                reader.int("!B")  # flags: part of the key
                columns.append(reader.string())
                reader.int("!I")  # type oid
                reader.int("!i")  # type modifier
            self.relations[oid] = Relation(oid, namespace, name, identity, tuple(columns))
            return None
        if kind in (b"Y", b"O"):  # a type's name, a replication origin: nothing to invalidate
            return None
        if kind == b"M" and self.current is None:
            return None  # a non-transactional message (someone else's): no change in it
        transaction = self.current
        if transaction is None:
            raise ProtocolError(f"message {kind!r} outside a transaction (no Begin seen)")
        if kind == b"C":
            reader.int("!B")
            transaction.commit_lsn, transaction.end_lsn = reader.int("!Q"), reader.int("!Q")
            transaction.committed_at = _timestamp(reader.int("!q"))
            self.current = None
            return transaction
        if kind == b"M":
            reader.int("!B")  # flags: transactional (non-transactional ones have no Begin)
            reader.int("!Q")
            prefix = reader.string()
            transaction.messages.append((prefix, reader.take(reader.int("!i"))))
            return None
        if kind == b"T":
            count, _options = reader.int("!i"), reader.int("!B")
            for _ in range(count):
                relation = self._relation(reader.int("!I"))
                transaction.changes.append(Change("truncate", relation))
            return None
        if kind not in (b"I", b"U", b"D"):
            raise ProtocolError(f"unknown pgoutput message type {kind!r}")
        relation = self._relation(reader.int("!I"))
        change = Change({b"I": "insert", b"U": "update", b"D": "delete"}[kind], relation)
        marker = reader.take(1)
        if marker in (b"K", b"O"):
            change.old = reader.tuple(relation)
            change.old_is_full = marker == b"O"
            if kind == b"U":
                marker = reader.take(1)
        if kind != b"D":
            if marker != b"N":
                raise ProtocolError(f"expected a new tuple ('N') in {kind!r}, got {marker!r}")
            change.new = reader.tuple(relation)
        transaction.changes.append(change)
        return None

    def _relation(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise ProtocolError(
                f"a change names relation {oid} before its Relation message"
            ) from None
