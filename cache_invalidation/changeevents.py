"""The invalidation events of one decoded transaction (see :mod:`.changes` for the contract).

One event per model and kind of change in the transaction (``<label>.created`` with the row's
key for one row, ``<label>.bulk_updated`` with ``metadata["rows"]`` for several, as the ORM
path's bulk writes), tags and keys resolved from the old and new row images with
:func:`.resolve.resolve` and the related cascades of :func:`.related.related_invalidations`
(one query per relation and chunk of rows, not per row).

* A multi-table child's row lacks its parents' columns: they are taken from the parent
  table's change of the same key in the same transaction (the ORM writes both); a column still
  unknown drops the templates naming it and adds the model's coarse tag.
* A many-to-many through row also yields, for each declared side, what the ORM path's
  ``m2m_changed`` event of that side yields: its declared tags with the relation as the
  changed field, and its automatic tags.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import models

from . import pgoutput, rowstates
from .changes import TableMap, skipped_tables, state
from .coarse import cascade_labels
from .events import InvalidationEvent
from .registry import Policy, registry
from .related import related_invalidations
from .resolve import automatic_tags, changed_fields, resolve
from .tagnames import auto_labels, coarse_tag, collection_tag

_KINDS = {"insert": "created", "update": "updated", "delete": "deleted", "truncate": "truncated"}


@dataclass
class _Group:
    """The changes of one model and kind in one transaction: one event."""

    table: TableMap
    kind: str
    rows: int = 0
    pk: Any = None
    tags: dict[str, None] = field(default_factory=dict)
    keys: dict[str, None] = field(default_factory=dict)
    changed: dict[str, None] = field(default_factory=dict)
    states: list[dict[str, Any]] = field(default_factory=list)  # for the related cascades

    def merge(self, tags: Any, keys: Any = ()) -> None:
        self.tags.update(dict.fromkeys(tags))
        self.keys.update(dict.fromkeys(keys))


def events_for(
    transaction: pgoutput.Transaction, maps: dict[str, TableMap], using: str, connection: Any
) -> list[InvalidationEvent]:
    """The events of one decoded transaction (empty when nothing covered changed)."""
    skip = skipped_tables(transaction)
    by_key = {
        (change.relation.name, key): change
        for change in transaction.changes
        if change.relation.name in maps
        and (key := _key_text(maps[change.relation.name], change)) is not None
    }
    groups: dict[tuple[type[models.Model], str], _Group] = {}
    for change in transaction.changes:
        table = maps.get(change.relation.name)
        if table is None or change.relation.name in skip:
            continue
        group = groups.get((table.model, change.kind))
        if group is None:
            group = groups[(table.model, change.kind)] = _Group(table, change.kind)
        _add(group, change, maps, by_key, connection)
    for group in groups.values():
        _cascade(group, using)
    return [_event(group, transaction) for group in groups.values() if group.rows]


def _key_text(table: TableMap, change: pgoutput.Change) -> str | None:
    column = str(table.model._meta.pk.column)
    for image in (change.new, change.old):
        if image and isinstance(image.get(column), str):
            return str(image[column])
    return None


def _add(
    group: _Group,
    change: pgoutput.Change,
    maps: dict[str, TableMap],
    by_key: dict[tuple[str, str], pgoutput.Change],
    connection: Any,
) -> None:
    table = group.table
    policy = table.policy
    group.rows += 1
    if change.kind == "truncate":
        group.merge(truncate_tags(policy))
        return
    old = state(table, change.old, connection) if change.old is not None else None
    new = state(table, change.new, connection) if change.new is not None else None
    key = _key_text(table, change)
    for parent in table.model._meta.get_parent_list():
        other = by_key.get((parent._meta.db_table, key or ""))
        parent_map = maps.get(parent._meta.db_table)
        if other is None or parent_map is None:
            continue
        if old is not None and other.old is not None:
            old = {**state(parent_map, other.old, connection), **old}
        if new is not None and other.new is not None:
            new = {**state(parent_map, other.new, connection), **new}
    if change.kind == "update" and old is not None:
        # Unchanged TOASTed columns and columns outside a non-FULL identity: the old value
        # holds where the new one is known, and vice versa.
        old = {**(new or {}), **old}
        new = {**old, **(new or {})}
    elif change.kind == "update":
        old = None  # not sent (no FULL identity and the key did not change): unknown
    wanted = set(policy.tracked)
    complete = all(wanted <= set(s) for s in (old, new) if s is not None)
    if change.kind == "update" and (old is None or not change.old_is_full):
        complete = False
    changed = None
    if old is not None and new is not None and complete:
        changed = changed_fields(policy, old, new)
        group.changed.update(dict.fromkeys(changed))
    group.merge(*resolve(policy if complete else _cut(policy, old, new), old, new, changed))
    if not complete:
        group.merge(coarse_tag(label) for label in auto_labels(table.model))
    group.states.extend(s for s in (old, new) if s is not None)
    pk = (new or old or {}).get(table.model._meta.pk.attname)
    group.pk = pk if group.rows == 1 else None


def _cascade(group: _Group, using: str) -> None:
    """The related rows' tags and keys, and a through row's sides (see the module docstring)."""
    policy = group.table.policy
    if not policy.related or not group.states:
        return
    states = list({id(s): s for s in group.states}.values())
    for start in range(0, len(states), rowstates.CHUNK):
        group.merge(*related_invalidations(policy, states[start : start + rowstates.CHUNK], using))
    for relation in policy.related:
        target = registry.get(relation.target)
        if not relation.changed or target is None:
            continue  # not a many-to-many side
        pks = list({s.get(relation.attname) for s in states} - {None})
        found = rowstates.read_states(relation.target, rowstates.watched(target), pks, using)
        for row in found.values():
            group.merge(*resolve(target, row, None, relation.changed))
        # A side row deleted since: its own change names its tags; these are its automatic ones.
        gone = [pk for pk in pks if rowstates.key(relation.target, pk) not in found]
        group.merge(automatic_tags(relation.target, gone))


def _cut(policy: Policy, *states: dict[str, Any] | None) -> Policy:
    """``policy`` without the templates some state cannot render."""
    known = [s for s in states if s is not None]
    pk_attname = policy.model._meta.pk.attname

    def keep(templates: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            t
            for t in templates
            if all({pk_attname if n == "pk" else n for n in t.fields} <= set(s) for s in known)
        )

    return dataclasses.replace(
        policy,
        tags=keep(policy.tags),
        keys=keep(policy.keys),
        on_fields=tuple((name, keep(ts)) for name, ts in policy.on_fields),
    )


def truncate_tags(policy: Policy) -> list[str]:
    """What a TRUNCATE of ``policy``'s table reaches: collection and coarse tags of the model,
    its parents, and (following ``related``) the models its rows cascade to."""
    labels = cascade_labels(policy.model)
    return [t for label in labels for t in (collection_tag(label), coarse_tag(label))]


def _event(group: _Group, transaction: pgoutput.Transaction) -> InvalidationEvent:
    kind = _KINDS[group.kind]
    metadata: dict[str, Any] = {
        "source": "changes",
        "xid": transaction.xid,
        "lsn": pgoutput.lsn_text(transaction.commit_lsn),
    }
    if group.rows > 1 or group.kind == "truncate":
        metadata["rows"] = group.rows
        kind = kind if group.kind == "truncate" else f"bulk_{kind}"
    label = group.table.policy.label
    return InvalidationEvent(
        type=f"{label}.{kind}",
        entity_type=label,
        entity_id="" if group.pk is None or group.rows > 1 else str(group.pk),
        tags=tuple(group.tags),
        keys=tuple(group.keys),
        changed_fields=tuple(group.changed),
        metadata=metadata,
        timestamp=_timestamp(transaction.committed_at),
    )


def _timestamp(moment: datetime | None) -> float:
    """The commit time: the lag metrics then measure commit -> applied."""
    return moment.timestamp() if moment is not None else time.time()
