"""Change data capture: committed row changes from a replication slot -> invalidation events.

Writes the ORM never sees (raw SQL, ``RunSQL``, psql, another service) reach the cache through
here: :func:`consume` peeks the slot (see :mod:`.replication` for why SQL-function polling),
decodes ``pgoutput`` (:mod:`.pgoutput`), maps each change of a table that has a policy
(declared models, the concrete model behind a declared proxy, multi-table parents, many-to-many
through tables) onto its model, converts the text values with the model's fields, and resolves
the same tags and keys as the ORM path (:func:`.resolve.resolve`, related cascades included).
Each decoded transaction is published as one batch through the configured transport; storm
control applies where the batch is applied, as for any batch.

**At least once.** The slot is advanced only after every transaction up to that position was
published (with ``sync``: applied, or dead-lettered, never dropped). A consumer killed anywhere
before the advance decodes the same transactions again on its next start: duplicates only.

**The ORM path's transactions.** With ``CHANGES_MARK_TRANSACTIONS`` on, a transaction that
publishes events through the ORM path also carries a logical decoding message (prefix
:data:`MARKER`) naming the tables of those events (:func:`mark`); the consumer skips that
transaction's changes of those tables, already invalidated at commit, and handles the rest.

What a change cannot tell is invalidated coarsely, never skipped: a column the row image lacks
(an UPDATE without ``REPLICA IDENTITY FULL``, an unchanged TOASTed value, a multi-table child
whose parent columns live in another table) drops the templates that name it and adds the
model's coarse tag (see :mod:`.storm`); a TRUNCATE invalidates the model's collection and
coarse tags (plain ``keys`` cannot be enumerated and stay until their TTL).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import models

from . import pgoutput
from .events import InvalidationEvent
from .registry import Policy, registry

logger = logging.getLogger("cache_invalidation")

MARKER = "cache_invalidation"
"""Prefix of the logical decoding message the ORM path writes (``CHANGES_MARK_TRANSACTIONS``)."""


@dataclass(frozen=True)
class TableMap:
    """A table's model and policy, and its columns' fields."""

    model: type[models.Model]
    policy: Policy
    fields: dict[str, models.Field]  # column -> field


def table_maps() -> dict[str, TableMap]:
    """Every table a policy covers -> how to read its rows (a declared model before an
    implicit one when two models share a table)."""
    found: dict[str, TableMap] = {}
    for model, policy in registry.policies.items():
        meta = model._meta
        if meta.proxy:
            continue  # its concrete model's table (which has a policy of its own)
        table = meta.db_table
        if table in found and not found[table].policy.implicit:
            continue
        columns = {f.column: f for f in meta.local_concrete_fields if f.column}
        found[table] = TableMap(model, policy, columns)
    return found


def tables() -> list[str]:
    """The tables the publication must cover, sorted."""
    return sorted(table_maps())


def mark(connection: Any, event: InvalidationEvent, marked: set[str]) -> None:
    """Write the marker for ``event``'s tables in the open transaction on ``connection``
    (PostgreSQL only; ``marked`` holds the tables this transaction marked already)."""

    if connection.vendor != "postgresql" or not event.entity_type:
        return
    try:
        model = apps.get_model(event.entity_type)
    except (LookupError, ValueError):
        return
    concrete = model._meta.concrete_model or model
    names = [m._meta.db_table for m in (concrete, *concrete._meta.get_parent_list())]
    fresh = [n for n in names if n not in marked]
    if not fresh:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, %s, %s)", [MARKER, json.dumps(fresh)])
    marked.update(fresh)


def skipped_tables(transaction: pgoutput.Transaction) -> set[str]:
    """The tables the ORM path already invalidated in ``transaction`` (see :func:`mark`)."""
    found: set[str] = set()
    for prefix, content in transaction.messages:
        if prefix == MARKER:
            with suppress(ValueError, TypeError):
                found.update(str(t) for t in json.loads(content.decode("utf-8")))
    return found


def convert(f: models.Field, text: object, connection: Any) -> Any:
    """A column's text as the ORM would hold it: ``to_python``, then ``from_db_value`` where
    the field has one (JSON decodes the text as the ORM does). Unconvertible text stays text."""
    if text is None or text is pgoutput.UNCHANGED:
        return text
    value: Any = text
    with suppress(ValidationError, TypeError, ValueError):
        value = f.to_python(text)
    converter = getattr(f, "from_db_value", None)
    if converter is not None:
        with suppress(ValidationError, TypeError, ValueError):
            value = converter(value, None, connection)
    return value


def state(table: TableMap, row: dict[str, object] | None, connection: Any) -> dict[str, Any]:
    """The attname -> value state of a row image, unknown (unchanged TOAST) values left out."""
    result: dict[str, Any] = {}
    for column, text in (row or {}).items():
        f = table.fields.get(column)
        if f is not None and text is not pgoutput.UNCHANGED:
            result[f.attname] = convert(f, text, connection)
    return result


def transactions(
    decoder: pgoutput.Decoder, messages: list[bytes]
) -> Iterator[pgoutput.Transaction]:
    for message in messages:
        transaction = decoder.feed(message)
        if transaction is not None:
            yield transaction
