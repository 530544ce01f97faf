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

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from . import pgoutput
from .events import InvalidationEvent
from .registry import Policy, registry
from .related import related_invalidations
from .resolve import auto_labels, changed_fields, collection_tag, resolve
from .storm import coarse_tag

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
        if meta.proxy or (not meta.managed and not meta.auto_created):
            continue
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
    from django.apps import apps

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


@dataclass
class _Group:
    """The changes of one model and kind in one transaction: one event."""

    policy: Policy
    kind: str
    rows: int = 0
    pk: Any = None
    tags: dict[str, None] = field(default_factory=dict)
    keys: dict[str, None] = field(default_factory=dict)
    changed: dict[str, None] = field(default_factory=dict)


def events_for(
    transaction: pgoutput.Transaction, maps: dict[str, TableMap], using: str, connection: Any
) -> list[InvalidationEvent]:
    """The events of one decoded transaction (empty when nothing declared changed)."""
    skip = skipped_tables(transaction)
    groups: dict[tuple[type[models.Model], str], _Group] = {}
    for change in transaction.changes:
        table = maps.get(change.relation.name)
        if table is None or change.relation.name in skip:
            continue
        group = groups.get((table.model, change.kind))
        if group is None:
            group = groups[(table.model, change.kind)] = _Group(table.policy, change.kind)
        _add(group, table, change, using, connection)
    return [_event(group, transaction) for group in groups.values() if group.rows]


def _add(
    group: _Group, table: TableMap, change: pgoutput.Change, using: str, connection: Any
) -> None:
    policy = table.policy
    group.rows += 1
    if change.kind == "truncate":
        group.tags.update(dict.fromkeys(truncate_tags(policy)))
        return
    old = state(table, change.old, connection) if change.old is not None else None
    new = state(table, change.new, connection) if change.new is not None else None
    if change.kind == "update" and old is not None:
        # Unchanged TOASTed columns and columns outside a non-FULL identity: the old value
        # holds where the new one is known, and vice versa.
        old = {**new, **old} if new is not None else old
        new = {**old, **(new or {})}
    elif change.kind == "update":
        old = None  # not sent (the key did not change): old state unknown
    wanted = set(policy.tracked)
    complete = all(wanted <= set(s) for s in (old, new) if s is not None)
    if change.kind == "update" and (old is None or not change.old_is_full):
        complete = False
    used = policy if complete else _cut(policy, old, new)
    changed = None
    if old is not None and new is not None and complete:
        changed = changed_fields(policy, old, new)
        group.changed.update(dict.fromkeys(changed))
    tags, keys = resolve(used, old, new, changed)
    group.tags.update(dict.fromkeys(tags))
    group.keys.update(dict.fromkeys(keys))
    if not complete:
        group.tags.update(dict.fromkeys(coarse_tag(label) for label in auto_labels(table.model)))
    if policy.related:
        rel_tags, rel_keys = related_invalidations(policy, (old, new), using)
        group.tags.update(dict.fromkeys(rel_tags))
        group.keys.update(dict.fromkeys(rel_keys))
    pk = (new or old or {}).get(table.model._meta.pk.attname)
    group.pk = pk if group.rows == 1 else None


def _cut(policy: Policy, *states: dict[str, Any] | None) -> Policy:
    """``policy`` without the templates some state cannot render."""
    known = [s for s in states if s is not None]
    pk_attname = policy.model._meta.pk.attname

    def renderable(template: Any) -> bool:
        names = {pk_attname if n == "pk" else n for n in template.fields}
        return all(names <= set(s) for s in known)

    def keep(templates: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(t for t in templates if renderable(t))

    return dataclasses.replace(
        policy,
        tags=keep(policy.tags),
        keys=keep(policy.keys),
        on_fields=tuple((name, keep(ts)) for name, ts in policy.on_fields),
    )


def truncate_tags(policy: Policy) -> list[str]:
    """What a TRUNCATE of ``policy``'s table reaches: collection and coarse tags of the model,
    its parents, and (following ``related``) the models its rows cascade to."""
    from .registry import registry as current

    labels: dict[str, None] = {}
    pending: list[type[models.Model]] = [policy.model]
    while pending:
        model = pending.pop()
        own = auto_labels(model)
        if own[0] in labels:
            continue
        labels.update(dict.fromkeys(own))
        found = current.get(model)
        if found is not None:
            pending.extend(r.target for r in found.related)
    return [t for label in labels for t in (collection_tag(label), coarse_tag(label))]


def _event(group: _Group, transaction: pgoutput.Transaction) -> InvalidationEvent:
    kind = {"insert": "created", "update": "updated", "delete": "deleted"}.get(
        group.kind, group.kind + "d"
    )
    metadata: dict[str, Any] = {
        "source": "changes",
        "xid": transaction.xid,
        "lsn": pgoutput.lsn_text(transaction.commit_lsn),
    }
    entity_id = "" if group.pk is None else str(group.pk)
    if group.rows > 1 or group.kind == "truncate":
        metadata["rows"] = group.rows
        kind = kind if group.kind == "truncate" else f"bulk_{kind}"
    label = group.policy.label
    return InvalidationEvent(
        type=f"{label}.{kind}",
        entity_type=label,
        entity_id=entity_id,
        tags=tuple(group.tags),
        keys=tuple(group.keys),
        changed_fields=tuple(group.changed),
        metadata=metadata,
        timestamp=_timestamp(transaction.committed_at),
    )


def _timestamp(moment: datetime | None) -> float:
    """The commit time: the lag metrics then measure commit -> applied."""
    return moment.timestamp() if moment is not None else time.time()


def transactions(
    decoder: pgoutput.Decoder, messages: list[bytes]
) -> Iterator[pgoutput.Transaction]:
    for message in messages:
        transaction = decoder.feed(message)
        if transaction is not None:
            yield transaction
