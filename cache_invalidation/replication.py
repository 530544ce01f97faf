"""The replication slot and publication that :mod:`.changes` reads, through SQL functions only.

Why SQL-function polling (``pg_logical_slot_peek_binary_changes`` then
``pg_replication_slot_advance``) rather than the streaming replication protocol: psycopg 3
has no streaming replication API and psycopg2's ``LogicalReplicationConnection`` ties the app
to one driver; the SQL functions run on an ordinary Django connection with either driver,
through poolers that do not speak the replication protocol, and give at-least-once for free:
*peek* leaves the slot where it is, so a consumer that dies after publishing and before
*advance* sees the same transactions again (duplicates are harmless, see DESIGN.md rule 3).
The cost is latency bounded by the polling interval, and each peek re-decoding from the slot's
restart point while a transaction stays open.

``pgoutput`` is the plugin: built into PostgreSQL 10+, nothing to install on managed
databases. It needs a publication naming the tables (:func:`setup_statements`), and
``REPLICA IDENTITY FULL`` so an UPDATE or DELETE carries the whole old row (the old state's
tags). Every function takes a Django connection and raises the database's own error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from .pgoutput import lsn_text, parse_lsn

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_name(setting: str, value: object) -> str:
    """A slot or publication name PostgreSQL takes unquoted; ValueError naming the setting."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(
            f"CACHE_INVALIDATION[{setting!r}] is {value!r}; a slot or publication name is "
            "lower-case letters, digits and underscores (at most 63), starting with a letter "
            "or underscore."
        )
    return value


def quote(connection: Any, name: str) -> str:
    return str(connection.ops.quote_name(name))


def setup_statements(
    connection: Any, slot: str, publication: str, tables: Sequence[str]
) -> list[str]:
    """The SQL that makes the publication (covering ``tables``), the slot, and full replica
    identity on the tables, leaving out what already exists; ``[]`` when all is in place.
    Names in ``tables`` that are no table here (a view behind an unmanaged model, a table not
    migrated yet) are left out: see :func:`absent_tables`.

    The publication comes before the slot: pgoutput reads the publication as of each change,
    so changes logged before the publication existed would not be sent.
    """
    statements: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication])
        exists = cursor.fetchone() is not None
        cursor.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [publication]
        )
        published = {row[0] for row in cursor.fetchall()}
        cursor.execute(
            "SELECT relname, relreplident FROM pg_class "
            "WHERE relkind IN ('r', 'p') AND relname = ANY(%s) AND pg_table_is_visible(oid)",
            [list(tables)],
        )
        identity = dict(cursor.fetchall())
        cursor.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
        has_slot = cursor.fetchone() is not None
    tables = [t for t in tables if t in identity]  # views and absent tables cannot be published
    missing = [t for t in tables if t not in published]
    names = ", ".join(quote(connection, t) for t in missing)
    if not exists:
        statements.append(f"CREATE PUBLICATION {quote(connection, publication)} FOR TABLE {names}")
    elif missing:
        statements.append(f"ALTER PUBLICATION {quote(connection, publication)} ADD TABLE {names}")
    for table in tables:
        if identity.get(table, "f") != "f":
            statements.append(f"ALTER TABLE {quote(connection, table)} REPLICA IDENTITY FULL")
    if not has_slot:
        statements.append(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    return statements


def absent_tables(connection: Any, tables: Sequence[str]) -> list[str]:
    """The names in ``tables`` that are no ordinary or partitioned table visible here."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class "
            "WHERE relkind IN ('r', 'p') AND relname = ANY(%s) AND pg_table_is_visible(oid)",
            [list(tables)],
        )
        found = {row[0] for row in cursor.fetchall()}
    return [t for t in tables if t not in found]


def slot_info(connection: Any, slot: str) -> dict[str, Any] | None:
    """``{"plugin", "database", "active", "confirmed_flush_lsn", "lag_bytes", "wal_status"}``
    of the slot, or None if there is no such slot."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT plugin, database, active, confirmed_flush_lsn::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, wal_status "
            "FROM pg_replication_slots WHERE slot_name = %s",
            [slot],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    keys = ("plugin", "database", "active", "confirmed_flush_lsn", "lag_bytes", "wal_status")
    return dict(zip(keys, row, strict=True))


def setting(connection: Any, name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [name])
        row = cursor.fetchone()
    return None if row is None else row[0]


def flush_lsn(connection: Any) -> int:
    """The WAL position flushed now: every transaction that committed before it is decodable."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
        return parse_lsn(cursor.fetchone()[0])


def peek(connection: Any, slot: str, publication: str, upto_lsn: int, limit: int) -> list[bytes]:
    """The pgoutput messages of the transactions that committed before ``upto_lsn``, from the
    slot's confirmed position on, stopping after the transaction that reaches ``limit``
    messages (decoding stops at transaction boundaries only). The slot does not move."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
            "'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
            [slot, lsn_text(upto_lsn), limit, publication],
        )
        return [bytes(row[0]) for row in cursor.fetchall()]


def advance(connection: Any, slot: str, lsn: int) -> None:
    """Confirm everything before ``lsn``: those transactions are never decoded again."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", [slot, lsn_text(lsn)])


def drop_slot(connection: Any, slot: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_drop_replication_slot(%s)", [slot])


def tables_without_full_identity(connection: Any, tables: Iterable[str]) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname = ANY(%s) "
            "AND pg_table_is_visible(oid) AND relreplident <> 'f' ORDER BY relname",
            [list(tables)],
        )
        return [row[0] for row in cursor.fetchall()]
