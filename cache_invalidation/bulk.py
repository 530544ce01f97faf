"""Bulk writes on declared models: ``update()``, ``bulk_create()``, ``bulk_update()``, ``delete()``.

Django sends no signal for the first three and one ``post_delete`` per row for the last.
:class:`BulkQuerySetMixin` is part of the queryset class that :mod:`.queryset` installs on the
managers of declared models only (nothing in Django is patched). Each method reads the affected
rows' states around the write and emits ONE event per call and model, ``<label>.bulk_updated`` /
``.bulk_created`` / ``.bulk_deleted`` (``entity_id`` empty, ``metadata["rows"]``), whose tags
and keys are the union of every row's, old and new state, through :func:`.batching.emit`: the
transaction still publishes one batch, and nothing if it rolls back.

* ``update()``: one SELECT of the key and watched fields of the matching rows (``FOR UPDATE OF``
  the model's table where the backend and the query allow it), the UPDATE restricted to those
  keys, so a row committed by another transaction in between is never written unseen; then, if
  a watched field was written, a SELECT of the new values by key. Key lists are chunked by
  :func:`.rowstates.chunks` (500 a statement on SQLite, 10,000 elsewhere).
* ``bulk_update()``: Django runs it as one ``update()`` per batch; each is handled as above
  (without re-chunking: its keys are fixed) and all are gathered into one event.
* ``bulk_create()``: new states come from the objects, as for ``save()`` (re-read by key when a
  watched value is an expression). With ``update_conflicts`` the conflicting rows are read by
  ``unique_fields`` (locked) before the write and every row by key after it, so the overwritten
  rows' old tags are invalidated too. An object left without a key (``ignore_conflicts``, or a
  backend without ``RETURNING``) yields the templates that do not name the key, and the model's
  collection tags.
* ``delete()``: Django's collector still sends ``post_delete`` per row; the receiver hands each
  row whose deletion originates from this queryset to :func:`gather_deleted`, and the queryset
  emits one event per declared model (cascaded rows included).

In autocommit mode each call runs in its own ``atomic()`` (read, write and event commit
together). Inside the caller's ``atomic()`` it adds no savepoint and, like Django, marks the
transaction for rollback only when a query failed. Under ``no_invalidation()`` every method is
Django's own. ``_raw_delete()`` (Django's fast delete, which sends no signal) is seen for
many-to-many through tables, the auto-created models Django never sends signals for. Not
seen: raw SQL and ``sql.UpdateQuery``; call :func:`cache_invalidation.invalidate` after those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import connections, models, router, transaction

from . import rowstates
from .batching import emit
from .events import InvalidationEvent
from .registry import Policy, registry
from .related import related_invalidations
from .resolve import (
    changed_fields,
    collection_tag,
    foreign_keys,
    resolve,
    unknown_foreign_key_tag,
)
from .rowstates import CHUNK, STATE, State
from .suspend import suspended


class _Gathering:
    """Tags, keys and changed fields of the rows one bulk call wrote, for one model."""

    def __init__(self, policy: Policy, using: str, keep_states: bool = False) -> None:
        self.policy = policy
        self.using = using
        self.rows = 0
        self.tags: dict[str, None] = {}
        self.keys: dict[str, None] = {}
        self.changed: dict[str, None] = {}
        self.new_states: dict[Any, State] | None = {} if keep_states else None
        self.related_states: list[State] = []  # rows whose related rows are invalidated too

    def add(
        self,
        old: State | None,
        new: State | None,
        changed: Iterable[str] | None,
        policy: Policy | None = None,
        rows: int = 1,
    ) -> None:
        """Add one row's change (see :func:`.resolve.resolve`); ``rows`` is what it counts as."""
        tags, keys = resolve(policy or self.policy, old, new, changed)
        self.merge(tags, keys, changed or (), rows)
        if self.policy.related:
            self.related_states.extend(s for s in (old, new) if s is not None)

    def merge(
        self, tags: Iterable[str], keys: Iterable[str], changed: Iterable[str] = (), rows: int = 1
    ) -> None:
        self.tags.update(dict.fromkeys(tags))
        self.keys.update(dict.fromkeys(keys))
        self.changed.update(dict.fromkeys(changed))
        self.rows += rows

    def emit(self, kind: str, after_commit: Callable[[], None] | None = None) -> None:
        if not self.rows:
            return
        if self.related_states:
            states = list({id(s): s for s in self.related_states}.values())
            for start in range(0, len(states), CHUNK):
                tags, keys = related_invalidations(
                    self.policy, states[start : start + CHUNK], self.using
                )
                self.merge(tags, keys, rows=0)
        label = self.policy.label
        event = InvalidationEvent(
            type=f"{label}.{kind}",
            entity_type=label,
            tags=tuple(self.tags),
            keys=tuple(self.keys),
            changed_fields=tuple(self.changed),
            metadata={"rows": self.rows},
        )
        emit(event, self.using, after_commit=after_commit)


class _Deletion:
    """The rows of declared models that one queryset ``delete()`` removed, by model."""

    def __init__(self, origin: models.QuerySet, using: str) -> None:
        self.origin = origin
        self.using = using
        self.by_model: dict[type[models.Model], _Gathering] = {}


# bulk_update() -> the update() calls Django makes for it; queryset delete() -> post_delete.
_joining: ContextVar[_Gathering | None] = ContextVar("cache_invalidation_bulk", default=None)
_deleting: ContextVar[_Deletion | None] = ContextVar("cache_invalidation_delete", default=None)


def gather_deleted(
    policy: Policy, tags: Iterable[str], keys: Iterable[str], using: str, origin: Any
) -> bool:
    """Collector hook for ``post_delete``: True if a queryset ``delete()`` takes this row.

    The receiver has resolved the row's ``tags`` and ``keys``; the queryset then publishes
    one event for all its rows instead of one per row. Rows whose deletion started elsewhere
    (an instance's ``delete()``, another queryset) are not taken.
    """
    deletion = _deleting.get()
    if deletion is None or origin is not deletion.origin or using != deletion.using:
        return False
    gathering = deletion.by_model.get(policy.model)
    if gathering is None:
        gathering = deletion.by_model[policy.model] = _Gathering(policy, using)
    gathering.merge(tags, keys)
    return True


class BulkQuerySetMixin:
    """Bulk writes of declared models emit one aggregated invalidation event per call.

    Mixed in before the model's own QuerySet class; each method ends in that class's method.
    """

    model: type[models.Model]
    query: Any
    _db: str | None
    _hints: dict[str, Any]
    _fields: Any
    _for_write: bool
    _result_cache: Any

    def _write_alias(self) -> str:
        self._for_write = True
        return self._db or router.db_for_write(self.model, **self._hints)

    def update(self, **kwargs: Any) -> int:
        """Django's ``update()``; the rows it wrote are invalidated, old and new state."""
        base: Any = super()
        policy = registry.get(self.model)
        if policy is None or suspended() or self.query.is_sliced or self.query.combinator:
            return base.update(**kwargs)
        written = rowstates.attnames(self.model, kwargs)
        if written is None:
            return base.update(**kwargs)  # Django names the bad field
        using = self._write_alias()
        joined = _joining.get()
        if joined is not None and (joined.policy.model is not self.model or joined.using != using):
            joined = None
        gathering = joined or _Gathering(policy, using)
        meta = self.model._meta
        pk_attname = meta.pk.attname
        fields = rowstates.watched(policy)
        with _own_transaction(using):
            reader: Any = self.values(*fields).prefetch_related(None)  # type: ignore[attr-defined]
            with transaction.mark_for_rollback_on_error(using):
                old_rows = {row[pk_attname]: row for row in rowstates.locked(reader, using)}
            if not old_rows:
                self._result_cache = None
                return 0
            pks = list(old_rows)
            if joined is not None:  # bulk_update(): the keys are Django's fixed list already
                rows = base.update(**kwargs)
            else:
                rows = 0
                for chunk in rowstates.chunks(pks, using):
                    part: Any = self.filter(pk__in=chunk)  # type: ignore[attr-defined]
                    rows += super(BulkQuerySetMixin, part).update(**kwargs)  # type: ignore[misc]
            self._result_cache = None
            if pk_attname in written:
                # The rows now have other keys: their new states cannot be matched to the old
                # ones. Invalidate the old states and the model's collection tags.
                for old in old_rows.values():
                    gathering.add(old, None, None)
                gathering.add(None, None, None, rows=0)
                # Foreign keys written with the key: their new values are not read either.
                unknown = {label for label, f in foreign_keys(self.model) if f.attname in written}
                gathering.merge(sorted(map(unknown_foreign_key_tag, unknown)), (), rows=0)
            else:
                if written.isdisjoint(fields):
                    new_rows = old_rows  # no watched field written: the same state
                else:
                    new_rows = rowstates.read_states(self.model, fields, pks, using)
                for pk, old in old_rows.items():
                    new = new_rows.get(pk, old)
                    gathering.add(old, new, changed_fields(policy, old, new))
                    if gathering.new_states is not None:
                        gathering.new_states[rowstates.key(self.model, pk)] = new
            if joined is None:
                gathering.emit("bulk_updated")
        return rows

    def bulk_update(
        self, objs: Iterable[models.Model], fields: Sequence[str], batch_size: int | None = None
    ) -> int:
        """Django's ``bulk_update()``; the rows are invalidated, old and new state, as one event.

        Only ``fields`` count as changed. The objects' remembered states move forward when the
        transaction commits (at once under ``no_invalidation()``), as a ``save()`` does.
        """
        base: Any = super()
        objs = tuple(objs)
        policy = registry.get(self.model)
        if policy is None or suspended():
            rows: int = base.bulk_update(objs, fields, batch_size=batch_size)
            if policy is not None:
                _settle(objs, policy, rowstates.attnames(self.model, dict.fromkeys(fields)))
            return rows
        using = self._write_alias()
        gathering = _Gathering(policy, using, keep_states=True)
        token = _joining.set(gathering)
        try:
            with _own_transaction(using):
                rows = base.bulk_update(objs, fields, batch_size=batch_size)
                gathering.emit("bulk_updated", _advance(objs, gathering.new_states or {}))
        finally:
            _joining.reset(token)
        return rows

    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Sequence[str] | None = None,
        unique_fields: Sequence[str] | None = None,
    ) -> list[models.Model]:
        """Django's ``bulk_create()``; the new rows (and overwritten ones) are invalidated.

        With ``update_conflicts`` the rows it overwrites are read by ``unique_fields`` before
        the write (by every single-column unique field if none are given), so their old tags
        are invalidated too. Objects that get no key yield only the templates that do not
        name the key, plus the model's collection tags.
        """
        base: Any = super()
        options = {
            "batch_size": batch_size,
            "ignore_conflicts": ignore_conflicts,
            "update_conflicts": update_conflicts,
            "update_fields": update_fields,
            "unique_fields": unique_fields,
        }
        policy = registry.get(self.model)
        objs = list(objs)
        if policy is None or suspended() or not objs:
            created: list[models.Model] = base.bulk_create(objs, **options)
            if policy is not None:
                _settle(created, policy, None)
            return created
        using = self._write_alias()
        fields = rowstates.watched(policy)
        gathering = _Gathering(policy, using)
        key = rowstates.key
        with _own_transaction(using):
            overwritten: dict[Any, State] = {}
            if update_conflicts:
                overwritten = rowstates.conflicting_states(
                    self.model, fields, objs, unique_fields, using
                )
            created = base.bulk_create(objs, **options)
            new_states = rowstates.created_states(
                self.model, fields, created, using, reread=update_conflicts
            )
            partial = rowstates.PartialPolicies(policy)
            advance: list[tuple[models.Model, State]] = []
            for obj in created:
                new = None if obj.pk is None else new_states.get(key(self.model, obj.pk))
                if new is None:  # no key, or its row is not there (a conflict was ignored)
                    state = rowstates.plain_state(obj, fields)
                    gathering.add(None, state, None, policy=partial.for_state(state))
                    continue
                old = overwritten.pop(key(self.model, obj.pk), None)
                gathering.add(old, new, None if old is None else changed_fields(policy, old, new))
                advance.append((obj, new))
            for old in overwritten.values():  # overwritten, but no object came back for it
                gathering.add(old, None, None, rows=0)
            gathering.emit("bulk_created", _advance_pairs(advance))
        return created

    def delete(self) -> tuple[int, dict[str, int]]:
        """Django's ``delete()``; all rows it removes are invalidated as one event per model."""
        base: Any = super()
        query = self.query
        if (
            registry.get(self.model) is None
            or suspended()
            or query.is_sliced
            or query.distinct_fields
            or query.combinator
            or self._fields is not None
        ):
            return base.delete()
        using = self._write_alias()
        deletion = _Deletion(self, using)  # type: ignore[arg-type]
        token = _deleting.set(deletion)
        try:
            with _own_transaction(using):
                result = base.delete()
                for gathering in deletion.by_model.values():
                    gathering.emit("bulk_deleted")
        finally:
            _deleting.reset(token)
        return result

    def _raw_delete(self, using: str) -> int:
        """Django's fast delete, which sends no signal, for a many-to-many through table (an
        auto-created model: Django never sends it any).

        A ``delete()`` of a through queryset (what ``remove()`` and ``clear()`` run, or a
        user's ``through.objects.filter(...).delete()``) reads the rows' states first and
        invalidates them as one event, both sides included. When the collector removes them
        because a side row is deleted, no row is read (that deletion would otherwise cost a
        SELECT a batch): the through table's collection and coarse tags are invalidated, which
        every entry that read the table carries, if any row was deleted.
        """
        base: Any = super()
        model = self.model
        policy = registry.get(model)
        if policy is None or suspended() or not model._meta.auto_created:
            return base._raw_delete(using)
        deletion = _deleting.get()
        gathering = _Gathering(policy, using)
        with _own_transaction(using):
            if deletion is not None and deletion.origin.model is model:
                fields = rowstates.watched(policy)
                for state in self.values(*fields).iterator():  # type: ignore[attr-defined]
                    gathering.add(state, None, None)
                deleted = int(base._raw_delete(using))
            else:
                deleted = int(base._raw_delete(using))
                if deleted:
                    label = policy.label
                    gathering.merge(
                        [collection_tag(label), unknown_foreign_key_tag(label)], (), rows=deleted
                    )
            gathering.emit("bulk_deleted")
        return deleted


@contextmanager
def _own_transaction(using: str) -> Iterator[None]:
    """A transaction of our own in autocommit mode; inside ``atomic()``, the caller's.

    No savepoint is added inside the caller's transaction: an error then behaves as in Django
    (a failed query marks the transaction for rollback; a refused argument does not).
    """
    if connections[using].in_atomic_block:
        yield
        return
    with transaction.atomic(using=using):
        yield


def _remember(obj: models.Model, state: Mapping[str, Any]) -> None:
    obj.__dict__.setdefault(STATE, {}).update(state)


def _advance_pairs(pairs: list[tuple[models.Model, State]]) -> Callable[[], None]:
    def advance() -> None:
        for obj, state in pairs:
            _remember(obj, state)

    return advance


def _advance(objs: Iterable[models.Model], states: dict[Any, State]) -> Callable[[], None]:
    pairs = []
    for obj in objs:
        state = states.get(rowstates.key(type(obj), obj.pk))
        if state is not None:
            pairs.append((obj, state))
    return _advance_pairs(pairs)


def _settle(objs: Iterable[models.Model], policy: Policy, written: set[str] | None) -> None:
    """Without an event, still move remembered states to what was written, so a later save()
    starts from the stored row; values that are expressions are forgotten (read when needed)."""
    fields = [a for a in rowstates.watched(policy) if written is None or a in written]
    for obj in objs:
        state = obj.__dict__.setdefault(STATE, {})
        for attname in fields:
            value = obj.__dict__.get(attname)
            if attname in obj.__dict__ and not hasattr(value, "resolve_expression"):
                state[attname] = value
            else:
                state.pop(attname, None)
