"""The pgoutput decoder on hand-built messages (PostgreSQL's format; no server needed)."""

from __future__ import annotations

import struct

import pytest

from cache_invalidation.pgoutput import UNCHANGED, Decoder, ProtocolError, lsn_text, parse_lsn


def begin(xid: int = 7) -> bytes:
    return b"B" + struct.pack("!Qqi", 0x100, 0, xid)


def commit(lsn: int = 0x100, end: int = 0x180) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, lsn, end, 86_400_000_000)


def relation(oid: int = 16384) -> bytes:
    columns = b"".join(
        struct.pack("!B", key) + name + b"\0" + struct.pack("!Ii", 23, -1)
        for key, name in ((1, b"id"), (0, b"name"), (0, b"body"))
    )
    return b"R" + struct.pack("!I", oid) + b"public\0shop_thing\0" + b"f" + struct.pack("!h", 3) + columns


def text(value: str) -> bytes:
    data = value.encode()
    return b"t" + struct.pack("!i", len(data)) + data


def tuple_(*values: bytes) -> bytes:
    return struct.pack("!h", len(values)) + b"".join(values)


def test_a_transaction_comes_out_at_its_commit_with_old_and_new_rows():
    decoder = Decoder()
    assert decoder.feed(begin()) is None
    assert decoder.feed(relation()) is None
    decoder.feed(b"I" + struct.pack("!I", 16384) + b"N" + tuple_(text("5"), text("Arc"), b"n"))
    decoder.feed(b"U" + struct.pack("!I", 16384) + b"O" + tuple_(text("5"), text("Arc"), b"n")
                 + b"N" + tuple_(text("5"), text("Arc 2"), b"u"))
    decoder.feed(b"D" + struct.pack("!I", 16384) + b"O" + tuple_(text("5"), text("Arc 2"), b"n"))
    decoder.feed(b"T" + struct.pack("!iBI", 1, 0, 16384))
    message = b"cache_invalidation\0" + struct.pack("!i", 4) + b'["x"]'[:4]
    decoder.feed(b"M" + struct.pack("!BQ", 1, 0x120) + message)
    done = decoder.feed(commit())
    assert done is not None
    assert (done.xid, lsn_text(done.commit_lsn), lsn_text(done.end_lsn)) == (7, "0/100", "0/180")
    assert done.committed_at is not None and done.committed_at.isoformat().startswith("2000-01-02")
    kinds = [(c.kind, c.relation.name) for c in done.changes]
    assert kinds == [("insert", "shop_thing"), ("update", "shop_thing"),
                     ("delete", "shop_thing"), ("truncate", "shop_thing")]
    insert, update, delete, _ = done.changes
    assert insert.new == {"id": "5", "name": "Arc", "body": None} and insert.old is None
    assert update.old_is_full and update.new == {"id": "5", "name": "Arc 2", "body": UNCHANGED}
    assert delete.old == {"id": "5", "name": "Arc 2", "body": None} and delete.new is None
    assert done.messages == [("cache_invalidation", b'["x"')]


def test_a_non_transactional_message_outside_a_transaction_is_ignored():
    decoder = Decoder()
    assert decoder.feed(b"M" + struct.pack("!BQ", 0, 1) + b"other\0" + struct.pack("!i", 0)) is None


@pytest.mark.parametrize(("message", "error"), [
    (b"Z", "unknown pgoutput message type b'Z'"),
    (b"I" + struct.pack("!I", 99) + b"N", "a change names relation 99 before its Relation message"),
    (b"C" + b"\0", "message ends after 2 bytes, 8 more expected"),
])
def test_what_cannot_be_decoded_is_an_error_naming_it(message, error):
    decoder = Decoder()
    decoder.feed(begin())
    with pytest.raises(ProtocolError, match=error.replace("(", r"\(").replace(")", r"\)")):
        decoder.feed(message)


def test_lsn_text_round_trips():
    assert lsn_text(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("0/0") == 0
