"""Signal receivers: turn model writes into invalidation events.

Connected in ``AppConfig.ready()`` with ``sender=`` for each model that has a policy. Every
instance of such a model remembers, from ``post_init``, the values of the fields its
declaration watches; a save compares them with what it writes, so the old state's tags are
known without a query. The remembered state moves forward only when the write commits.

An instance that was not loaded from the database has nothing to remember. Saving it is an
INSERT when it has no primary key (or the key has a default): there is no old state. If it is
given the primary key of an existing row, Django may UPDATE that row; then the old values are
read with one query in ``pre_save``. Deferred fields (``only()``/``defer()``) are read the same
way, in one query, when a save or delete needs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models, router, transaction

from . import bulk
from .batching import emit
from .events import InvalidationEvent
from .registry import Policy, registry
from .related import related_invalidations
from .resolve import changed_fields, resolve
from .rowstates import CLEARED, PENDING, STATE, remember
from .suspend import suspended


def on_post_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    policy = registry.get(sender)
    if policy is not None:
        remember(instance, policy)


def _pk_assigned_by_database(field: models.Field) -> bool:
    return field.has_default() or bool(getattr(field, "has_db_default", lambda: False)())


def old_state(instance: models.Model, policy: Policy, using: str) -> dict[str, Any] | None:
    """The row as stored before this write, or None if there is no such row."""
    known: dict[str, Any] = dict(instance.__dict__.get(STATE) or {})
    pk = instance.pk
    if instance._state.adding:
        if pk is None or _pk_assigned_by_database(instance._meta.pk):
            return None
        known = {}
    elif known.get(instance._meta.pk.attname, pk) != pk:
        known = {}  # remembered before the row had its key: not a stored state
    missing = [a for a in policy.tracked if a not in known]
    if missing and pk is not None:
        row = type(instance)._base_manager.using(using).filter(pk=pk).values(*missing).first()
        if row is None:
            return known or None
        known.update(row)
    return known


def on_pre_save(
    sender: type[models.Model], instance: models.Model, raw: bool, using: str, **kwargs: Any
) -> None:
    policy = registry.get(sender)
    if policy is None or suspended():
        return
    # A raw save (loaddata) is handled from the row's own fields alone: the old state is read
    # with one query by key, and nothing related to the instance is looked at.
    instance.__dict__[PENDING] = old_state(instance, policy, using)


def on_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool,
    using: str,
    update_fields: Iterable[str] | None,
    **kwargs: Any,
) -> None:
    policy = registry.get(sender)
    data = instance.__dict__
    old = data.pop(PENDING, None)
    if policy is None:
        return
    if suspended():
        remember(instance, policy)  # no event, but later saves must start from this state
        return
    current = {a: data[a] for a in policy.tracked if a in data}
    if created:
        old = None
    if old is not None:
        # Fields left out of update_fields (or never loaded) were not written: they keep
        # their stored value.
        written = None if update_fields is None else set(update_fields)
        new = {
            a: current[a]
            if a in current
            and (written is None or a in written or policy.names.get(a, a) in written)
            else old.get(a, current.get(a))
            for a in policy.tracked
        }
        changed: tuple[str, ...] | None = changed_fields(policy, old, new)
    else:
        new = current
        changed = None
    tags, keys = _with_related(policy, resolve(policy, old, new, changed), (old, new), using)

    def advance() -> None:
        state = data.setdefault(STATE, {})
        state.update(new)

    emit(
        _event(policy, instance, "created" if created else "updated", tags, keys, changed or ()),
        using,
        after_commit=advance,
    )


def on_pre_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    policy = registry.get(sender)
    if policy is None or suspended():
        return
    instance.__dict__[PENDING] = old_state(instance, policy, using)


def on_post_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    policy = registry.get(sender)
    old = instance.__dict__.pop(PENDING, None)
    if policy is None or suspended():
        return
    if old is None:
        old = {a: instance.__dict__[a] for a in policy.tracked if a in instance.__dict__}
    tags, keys = _with_related(policy, resolve(policy, old, None, None), (old,), using)
    if bulk.gather_deleted(policy, tags, keys, using, kwargs.get("origin")):
        return  # a queryset delete(): one event for all its rows, published by the queryset
    emit(_event(policy, instance, "deleted", tags, keys, ()), using)


def on_m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    model: type[models.Model],
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    if suspended():
        return
    relation = _relation(sender, reverse)
    if relation is None:
        return
    own_name, other_name, source_column, target_column = relation
    if action == "pre_clear":
        if registry.get(model) is not None:
            cleared = set(
                sender._base_manager.using(using)
                .filter(**{source_column: instance.pk})
                .values_list(target_column, flat=True)
            )
            instance.__dict__.setdefault(CLEARED, {})[sender] = cleared
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if action == "post_clear":
        pk_set = instance.__dict__.get(CLEARED, {}).pop(sender, set())
    elif not pk_set:
        return
    policy = registry.get(type(instance))
    if policy is not None:
        state = old_state(instance, policy, using) or {}
        tags, keys = _with_related(
            policy, resolve(policy, state, None, (own_name,)), (state,), using
        )
        emit(_event(policy, instance, "m2m_changed", tags, keys, (own_name,)), using)
    other = registry.get(model)
    if other is not None and pk_set:
        for state in _states_of(model, other, pk_set, using):
            tags, keys = resolve(other, state, None, (other_name,))
            emit(
                InvalidationEvent(
                    type=f"{other.label}.m2m_changed",
                    entity_type=other.label,
                    entity_id=str(state[model._meta.pk.attname]),
                    tags=tags,
                    keys=keys,
                    changed_fields=(other_name,),
                ),
                using,
            )


def _states_of(
    model: type[models.Model], policy: Policy, pks: Iterable[Any], using: str
) -> list[dict[str, Any]]:
    pk_attname = model._meta.pk.attname
    fields = list(dict.fromkeys((pk_attname, *policy.tracked)))
    if fields == [pk_attname]:
        return [{pk_attname: pk} for pk in pks]  # templates use only the key: no query
    return list(model._base_manager.using(using).filter(pk__in=list(pks)).values(*fields))


# through model -> (forward field, the model that declares it)
_m2m_fields: dict[type[models.Model], models.ManyToManyField] = {}


def register_m2m(field: models.ManyToManyField) -> type[models.Model]:
    through = field.remote_field.through
    if through is None:  # pragma: no cover - Django resolves it before apps are ready
        raise RuntimeError(f"{field} has no through model yet")
    _m2m_fields[through] = field
    return through


def _relation(through: type[models.Model], reverse: bool) -> tuple[str, str, str, str] | None:
    """(relation name on the instance's side, on the other side, through columns)."""
    field = _m2m_fields.get(through)
    if field is None:
        return None
    forward_name = field.name
    reverse_name = field.remote_field.get_accessor_name() or field.related_query_name()
    source = field.m2m_field_name() + "_id"
    target = field.m2m_reverse_field_name() + "_id"
    if reverse:
        return reverse_name, forward_name, target, source
    return forward_name, reverse_name, source, target


def _with_related(
    policy: Policy,
    own: tuple[tuple[str, ...], tuple[str, ...]],
    states: tuple[dict[str, Any] | None, ...],
    using: str,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not policy.related:
        return own
    tags, keys = related_invalidations(policy, states, using)
    return (
        tuple(dict.fromkeys((*own[0], *tags))),
        tuple(dict.fromkeys((*own[1], *keys))),
    )


def _event(
    policy: Policy,
    instance: models.Model,
    kind: str,
    tags: tuple[str, ...],
    keys: tuple[str, ...],
    changed: tuple[str, ...],
) -> InvalidationEvent:
    return InvalidationEvent(
        type=f"{policy.label}.{kind}",
        entity_type=policy.label,
        entity_id=str(instance.pk),
        tags=tags,
        keys=keys,
        changed_fields=changed,
    )


def send_write_signals(model: type[models.Model]) -> None:
    """Run the save and delete receivers for an auto-created model (a many-to-many through
    table), for which Django sends no ``pre_save``/``post_save``/``pre_delete``/``post_delete``.

    ``through.objects.create()`` and a through row's ``save()``/``delete()`` then invalidate
    like any declared row (both sides through the policy's relations). Its deletions by
    queryset and by the collector are Django's fast deletes, seen by the queryset's
    ``_raw_delete`` (see :mod:`.bulk`); for those the delete receivers stay unconnected, so
    Django keeps deleting through rows without loading them one by one.
    """
    if not model._meta.auto_created or getattr(model, "_cache_invalidation_signals", False):
        return
    save_base = model.save_base
    delete = model.delete

    def save_base_with_signals(self: models.Model, *args: Any, **kwargs: Any) -> Any:
        sender = type(self)
        raw = bool(kwargs.get("raw", False))
        using = kwargs.get("using") or router.db_for_write(sender, instance=self)
        adding = self._state.adding
        on_pre_save(sender, self, raw, using)
        result = save_base(self, *args, **kwargs)
        on_post_save(sender, self, adding, raw, using, kwargs.get("update_fields"))
        return result

    def delete_with_signals(self: models.Model, *args: Any, **kwargs: Any) -> Any:
        sender = type(self)
        using = kwargs.get("using") or router.db_for_write(sender, instance=self)
        with transaction.atomic(using=using, savepoint=False):
            on_pre_delete(sender, self, using)
            result = delete(self, *args, **kwargs)
            on_post_delete(sender, self, using)
        return result

    model.save_base = save_base_with_signals  # type: ignore[method-assign]
    model.delete = delete_with_signals  # type: ignore[method-assign]
    model._cache_invalidation_signals = True  # type: ignore[attr-defined]


def wrap_refresh_from_db(model: type[models.Model]) -> None:
    """Keep the remembered state current when fields are reloaded (including deferred ones)."""
    original = model.refresh_from_db
    if getattr(original, "_cache_invalidation", False):
        return

    def refresh_from_db(self: models.Model, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        policy = registry.get(type(self))
        if policy is None:
            return
        fields = kwargs.get("fields", args[1] if len(args) > 1 else None)
        wanted = None if fields is None else set(fields)
        state = self.__dict__.setdefault(STATE, {})
        for attname in policy.tracked:
            reloaded = wanted is None or attname in wanted or policy.names.get(attname) in wanted
            if reloaded and attname in self.__dict__:
                state[attname] = self.__dict__[attname]

    refresh_from_db._cache_invalidation = True  # type: ignore[attr-defined]
    refresh_from_db.__doc__ = original.__doc__
    model.refresh_from_db = refresh_from_db  # type: ignore[method-assign]
