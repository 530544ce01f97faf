"""Row states: what each instance remembers, and the watched values bulk writes read.

Every instance of a declared model keeps, in ``instance.__dict__[STATE]``, the values of the
fields its policy watches as they were stored (:func:`remember`); the receivers and the bulk
methods both read and move it, so it lives here, below both.

A *state* maps attribute names to stored values (see :mod:`.resolve`). Rows are read by key in
chunks so that no statement exceeds a backend's parameter limit, and locked with
``SELECT ... FOR UPDATE`` (``OF`` the model's own table) where the backend and the query allow
it, so they cannot change between the read and the write. Reads run on the model's base
manager, so default-manager filters never hide a row that was written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from functools import reduce
from operator import or_
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connections, models, transaction

from .registry import Policy

STATE = "_cache_invalidation_state"
"""Where an instance keeps its remembered state (attname -> stored value)."""
PENDING = "_cache_invalidation_old"
"""Where a write keeps the old state between its pre_ and post_ signal."""
CLEARED = "_cache_invalidation_cleared"
"""Where an m2m ``clear()`` keeps the keys it removed, between pre_clear and post_clear."""


def remember(instance: models.Model, policy: Policy) -> None:
    """Remember the loaded values of ``policy``'s watched fields on ``instance``."""
    data = instance.__dict__
    data[STATE] = {a: data[a] for a in policy.tracked if a in data}


CHUNK = 500
"""Keys per statement on backends that limit query parameters (SQLite allows 999)."""
LARGE_CHUNK = 10_000
"""Keys per statement elsewhere: bounds statement size, not correctness."""

State = dict[str, Any]


def watched(policy: Policy) -> list[str]:
    """The attribute names a state of ``policy``'s model holds: the key, then the tracked."""
    return list(dict.fromkeys((policy.model._meta.pk.attname, *policy.tracked)))


def attnames(model: type[models.Model], names: Mapping[str, Any]) -> set[str] | None:
    """Attribute names of the concrete fields ``names`` write; None if one is not such a field."""
    result = set()
    for name in names:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            return None  # Django reports it, in its own words
        if not getattr(field, "concrete", False) or field.many_to_many:
            return None
        result.add(field.attname)  # type: ignore[union-attr]
    return result


def key(model: type[models.Model], pk: Any) -> Any:
    """A key as the database returns it, so keys from objects and from rows compare equal."""
    try:
        return model._meta.pk.to_python(pk)
    except (ValidationError, TypeError, ValueError):
        return pk  # a key the database would refuse; Django reports it


def chunks(items: list[Any], using: str, per_item: int = 1) -> Iterator[list[Any]]:
    """``items`` in slices small enough for one statement on ``using``'s backend."""
    limited = connections[using].features.max_query_params
    size = max(1, (CHUNK if limited else LARGE_CHUNK) // per_item)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def locked(queryset: Any, using: str) -> Any:
    """``queryset`` with its rows locked until commit, where the backend and query allow it."""
    features = connections[using].features
    query = queryset.query
    if (
        not features.has_select_for_update
        or query.select_for_update
        or query.distinct
        or query.group_by is not None
        or any(
            getattr(a, "contains_aggregate", False) or getattr(a, "contains_over_clause", False)
            for a in query.annotations.values()
        )
    ):
        return queryset
    if features.has_select_for_update_of:
        return queryset.select_for_update(of=("self",))
    return queryset.select_for_update()


def read_states(
    model: type[models.Model], fields: list[str], pks: list[Any], using: str
) -> dict[Any, State]:
    """Stored states of the rows with keys ``pks``, by key (chunked; absent rows are left out)."""
    pk_attname = model._meta.pk.attname
    states: dict[Any, State] = {}
    manager: Any = model._base_manager
    with transaction.mark_for_rollback_on_error(using):
        for chunk in chunks(pks, using):
            rows = manager.using(using).filter(pk__in=chunk).order_by().values(*fields)
            for row in rows:
                states[row[pk_attname]] = row
    return states


def conflicting_states(
    model: type[models.Model],
    fields: list[str],
    objs: list[models.Model],
    unique_fields: Sequence[str] | None,
    using: str,
) -> dict[Any, State]:
    """The stored states of the rows an upsert of ``objs`` would overwrite, by key, locked."""
    meta = model._meta
    if unique_fields:
        groups = [[meta.get_field(meta.pk.name if n == "pk" else n) for n in unique_fields]]
    else:  # the backend picks the constraint itself: look at every single-column one
        groups = [[f] for f in meta.concrete_fields if f.unique]
    pk_attname = meta.pk.attname
    manager: Any = model._base_manager
    states: dict[Any, State] = {}
    with transaction.mark_for_rollback_on_error(using):
        for group in groups:
            columns = [f.attname for f in group]  # type: ignore[union-attr]
            wanted = list(
                dict.fromkeys(
                    values
                    for obj in objs
                    if None not in (values := tuple(getattr(obj, c) for c in columns))
                )
            )
            for chunk in chunks(wanted, using, per_item=len(columns)):
                if len(columns) == 1:
                    condition = models.Q(**{f"{columns[0]}__in": [v[0] for v in chunk]})
                else:
                    condition = reduce(
                        or_, (models.Q(**dict(zip(columns, v, strict=True))) for v in chunk)
                    )
                rows = manager.using(using).filter(condition).order_by().values(*fields)
                for row in locked(rows, using):
                    states[row[pk_attname]] = row
    return states


def created_states(
    model: type[models.Model],
    fields: list[str],
    objs: list[models.Model],
    using: str,
    reread: bool,
) -> dict[Any, State]:
    """New states of bulk-created ``objs`` that have a key: from the objects where they hold
    plain values, else (and always when ``reread``: an upsert keeps unwritten columns) read."""
    states: dict[Any, State] = {}
    missing: list[Any] = []
    for obj in objs:
        if obj.pk is None:
            continue
        state = plain_state(obj, fields)
        if reread or len(state) < len(fields):
            missing.append(obj.pk)
        else:
            states[key(model, obj.pk)] = state
    if missing:
        states.update(read_states(model, fields, missing, using))
    return states


def plain_state(obj: models.Model, fields: list[str]) -> State:
    """The watched values ``obj`` holds, leaving out unloaded ones, expressions and a None key."""
    data = obj.__dict__
    pk_attname = obj._meta.pk.attname
    return {
        a: data[a]
        for a in fields
        if a in data
        and not hasattr(data[a], "resolve_expression")
        and not (a == pk_attname and data[a] is None)
    }


class PartialPolicies:
    """``policy`` cut down to the templates a state without some values can render.

    For objects that ``bulk_create()`` left without a key (or with an expression): the
    templates naming what is missing are dropped; :func:`.resolve.resolve` still adds what it
    adds for a row without a key (the model's collection tags).
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.pk_attname = policy.model._meta.pk.attname
        self.cut: dict[frozenset[str], Policy] = {}

    def for_state(self, state: State) -> Policy:
        available = set(state)
        if self.pk_attname in available:
            available.add("pk")
        cut_key = frozenset(available)
        if cut_key not in self.cut:

            def keep(templates: tuple[Any, ...]) -> tuple[Any, ...]:
                return tuple(t for t in templates if available.issuperset(t.fields))

            policy = self.policy
            self.cut[cut_key] = dataclasses.replace(
                policy,
                tags=keep(policy.tags),
                keys=keep(policy.keys),
                on_fields=tuple((name, keep(ts)) for name, ts in policy.on_fields),
            )
        return self.cut[cut_key]
