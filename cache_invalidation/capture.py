"""Automatic dependency capture: what a cached value read, it is tagged with.

While ``tagged_cache.get_or_set``, ``@cached`` or ``{% cachetagged %}`` computes a value, a
capture is active in the current context. Every instance of a declared model that is loaded
adds its instance tag (``"shop.Product:7"``); every queryset of a declared model that is
evaluated adds the collection tag of each declared model it reads (``"shop.Product:*"``),
unless it only looks rows up by primary key, which adds the instance tags of the keys asked
for (so a later create of that key counts too). Saves of declared models invalidate these
automatic tags as well as the declared ones (see :mod:`.resolve`).

Captures nest: what an inner computation read is also a dependency of the outer one. Opt out
per call with ``capture=False``. Only declared models are seen: querysets of undeclared models,
subqueries and raw SQL are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import models
from django.db.models.lookups import Exact, In

from .resolve import auto_labels, collection_tag, instance_tag

_active: ContextVar[tuple[set[str], ...]] = ContextVar("cache_invalidation_capture", default=())


@contextmanager
def capturing() -> Iterator[set[str]]:
    """Collect the automatic tags of what the block reads into the yielded set."""
    found: set[str] = set()
    stack = _active.get()
    token = _active.set((*stack, found))
    try:
        yield found
    finally:
        _active.reset(token)
        for outer in stack:
            outer.update(found)


def is_active() -> bool:
    return bool(_active.get())


def record(tags: Any) -> None:
    stack = _active.get()
    if stack:
        stack[-1].update(tags)


def record_instance(instance: models.Model) -> None:
    if _active.get() and instance.pk is not None:
        record(instance_tag(label, instance.pk) for label in auto_labels(type(instance)))


def queryset_tags(queryset: models.QuerySet) -> list[str]:
    """The automatic tags a queryset's result depends on."""
    from .registry import registry

    model = queryset.model
    query = queryset.query
    pks = _pk_lookup(query, model)
    if pks is not None and not query.annotations:
        return [instance_tag(label, pk) for label in auto_labels(model) for pk in pks]
    tags = [collection_tag(label) for label in auto_labels(model)]
    # Joins trimmed away (a filter on category=obj uses the key column) keep refcount 0.
    tables = {
        entry.table_name
        for alias, entry in query.alias_map.items()
        if query.alias_refcount.get(alias, 0) > 0
    }
    for other in registry.policies:
        if other._meta.db_table in tables and other is not model:
            tags.extend(collection_tag(label) for label in auto_labels(other))
    return tags


def _pk_lookup(query: Any, model: type[models.Model]) -> list[Any] | None:
    """The keys asked for, if the query's only condition is ``pk=`` / ``pk__in=``."""
    where = query.where
    if where.negated or where.connector != "AND" or not where.children:
        return None
    pk_column = model._meta.pk.column
    base = query.get_initial_alias() if not query.alias_map else next(iter(query.alias_map))
    keys: list[Any] | None = None
    for child in where.children:
        if not isinstance(child, (Exact, In)):
            return None
        lhs = child.lhs
        if getattr(getattr(lhs, "target", None), "column", None) != pk_column:
            return None
        if getattr(lhs, "alias", None) != base or hasattr(child.rhs, "resolve_expression"):
            return None
        values = list(child.rhs) if isinstance(child, In) else [child.rhs]
        keys = values if keys is None else [v for v in keys if v in values]
    return keys


class CaptureQuerySetMixin:
    """Reports the dependencies of evaluated querysets to the active capture."""

    def _fetch_all(self) -> None:
        if self._result_cache is None and _active.get():  # type: ignore[attr-defined]
            record(queryset_tags(self))  # type: ignore[arg-type]
        super()._fetch_all()  # type: ignore[misc]

    def iterator(self, *args: Any, **kwargs: Any) -> Any:
        if _active.get():
            record(queryset_tags(self))  # type: ignore[arg-type]
        return super().iterator(*args, **kwargs)  # type: ignore[misc]

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        if _active.get():
            record(queryset_tags(self))  # type: ignore[arg-type]
        return super().aggregate(*args, **kwargs)  # type: ignore[misc]

    def count(self) -> int:
        if self._result_cache is None and _active.get():  # type: ignore[attr-defined]
            record(queryset_tags(self))  # type: ignore[arg-type]
        return super().count()  # type: ignore[misc]

    def exists(self) -> bool:
        if self._result_cache is None and _active.get():  # type: ignore[attr-defined]
            record(queryset_tags(self))  # type: ignore[arg-type]
        return super().exists()  # type: ignore[misc]
