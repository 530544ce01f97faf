"""Automatic dependency capture: what a cached value read, it is tagged with.

While ``tagged_cache.get_or_set``, ``@cached`` or ``{% cachetagged %}`` computes a value, a
capture is active in the current context. Every instance of a declared model that is loaded
adds its instance tag (``"shop.Product:7"``); every queryset of a declared model that is
evaluated adds the collection tag of each declared model it reads (``"shop.Product:*"``),
with two narrower cases for the queryset's own model:

* a query whose only conditions are ``pk=`` / ``pk__in=`` adds the instance tags of the keys
  asked for (so a later create of that key counts too);
* a query whose top-level ``WHERE`` is an ``AND`` holding an equality on one of the model's
  foreign-key columns (``filter(product_id=5)``, ``filter(product=obj)``, ``product__pk=5``,
  a related manager such as ``product.reviews``) adds that value's foreign-key tag
  (``"shop.Review:product_id=5"``) instead of the model's collection tag; ``__in`` with at
  most :data:`MAX_IN_VALUES` values adds one tag per value. See :func:`foreign_key_condition`
  for what falls back to the collection tag.

Models joined by the query keep their collection tags. Saves of declared models invalidate
these automatic tags as well as the declared ones (see :mod:`.resolve`), foreign-key tags for
the old and the new value of every foreign key.

Captures nest: what an inner computation read is also a dependency of the outer one. Opt out
per call with ``capture=False``. Only declared models are seen: querysets of undeclared models,
subqueries and raw SQL are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import connections, models
from django.db.models.expressions import Col, RawSQL, Subquery
from django.db.models.lookups import Exact, In, Lookup
from django.db.models.sql.query import Query
from django.db.models.sql.where import WhereNode

from .resolve import auto_labels, collection_tag, foreign_key_tag, instance_tag, key_text

MAX_IN_VALUES = 50
"""A ``<foreign key>__in=[...]`` condition with more values than this is not narrowed."""

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
    own, *parents = auto_labels(model)
    condition = foreign_key_condition(queryset)
    if condition is None:
        tags = [collection_tag(own)]
    else:
        attname, texts = condition
        tags = [foreign_key_tag(own, attname, text) for text in texts]
    # A multi-table child's query reads its parents' rows too, by join.
    tags.extend(collection_tag(label) for label in parents)
    # Joins trimmed away (a filter on category=obj uses the key column) keep refcount 0.
    tables = {
        entry.table_name
        for alias, entry in query.alias_map.items()
        if query.alias_refcount.get(alias, 0) > 0
    }
    concrete = model._meta.concrete_model
    for other in registry.policies:
        # Proxies share the model's table: a self-join already kept the collection tag.
        if other._meta.db_table in tables and other._meta.concrete_model is not concrete:
            tags.extend(collection_tag(label) for label in auto_labels(other))
    return list(dict.fromkeys(tags))


def foreign_key_condition(queryset: models.QuerySet) -> tuple[str, list[str]] | None:
    """(attname, key texts) of a foreign-key equality that every row of the result satisfies.

    Looked for among the conditions ANDed at the top of ``WHERE`` (nested ``AND`` groups
    included) that compare a column of the model's own table, with no join in between, to
    plain values: ``exact`` (one value) or ``in`` (up to :data:`MAX_IN_VALUES` values, ``None``
    dropped). Of several, the one with the fewest values, then the first attname, is taken.

    None, so the collection tag is kept, when the top of ``WHERE`` is negated or an ``OR``;
    when the query joins its own table again, is a ``union()``/``intersection()``/
    ``difference()``, uses ``extra()``, a ``FilteredRelation`` or raw SQL, or has a subquery in
    its conditions, annotations or ordering (any of which may read other rows of the table);
    and for keys compared as text where the database's collation may not be plain equality
    (other backends than SQLite and PostgreSQL, or a ``db_collation``).
    """
    model = queryset.model
    query = queryset.query
    concrete = model._meta.concrete_model or model
    where = query.where
    if (
        where.negated
        or where.connector != "AND"
        or not where.children
        or query.combinator
        or query.extra
        or query.extra_tables
        or query.extra_order_by
        or not query.alias_map
    ):
        return None
    base = next(iter(query.alias_map))
    table = concrete._meta.db_table
    if query.alias_map[base].table_name != table:
        return None
    for alias, entry in query.alias_map.items():
        if query.alias_refcount.get(alias, 0) <= 0:
            continue
        if getattr(entry, "filtered_relation", None) is not None:
            return None
        if alias != base and entry.table_name == table:
            return None  # a self-join: the result depends on other rows of the table
    ordering = [o for o in query.order_by if not isinstance(o, str)]
    if _unsafe(where) or any(_unsafe(e) for e in (*query.annotations.values(), *ordering)):
        return None
    keys = {
        f.attname: f
        for f in concrete._meta.local_concrete_fields
        if f.is_relation and (f.many_to_one or f.one_to_one)
    }
    vendor = connections[queryset.db].vendor
    found: list[tuple[int, str, list[str]]] = []
    for lookup in _anded(where):
        lhs = lookup.lhs
        target = getattr(lhs, "target", None)
        if not isinstance(lhs, Col) or lhs.alias != base or target is None:
            continue
        f = keys.get(getattr(target, "attname", ""))
        if f is not target or not _plain_equality(f, vendor):
            continue
        texts = _texts(f, lookup)
        if texts:
            found.append((len(texts), f.attname, texts))
    if not found:
        return None
    _, attname, texts = min(found)
    return attname, texts


def _anded(node: WhereNode) -> Iterator[Lookup]:
    """The ``exact``/``in`` lookups that must all hold for a row to pass ``node`` (an AND)."""
    for child in node.children:
        if isinstance(child, WhereNode):
            if not child.negated and child.connector == "AND":
                yield from _anded(child)
        elif isinstance(child, (Exact, In)):
            yield child


def _texts(f: models.Field, lookup: Lookup) -> list[str] | None:
    rhs = lookup.rhs
    if isinstance(lookup, In):
        if not isinstance(rhs, (list, tuple, set, frozenset)):
            return None  # a subquery or an expression
        values = [v for v in rhs if v is not None]
        if len(values) > MAX_IN_VALUES:
            return None
    else:
        values = [rhs]
    texts = [key_text(f, v) for v in values]
    if not texts or any(t is None for t in texts):
        return None
    return sorted(dict.fromkeys(t for t in texts if t is not None))


def _plain_equality(f: models.Field, vendor: str) -> bool:
    """Whether the database compares this key's values as the tags do (exact text)."""
    target: Any = f.target_field  # type: ignore[attr-defined]
    if isinstance(target, (models.IntegerField, models.AutoField, models.UUIDField)):
        return True
    if isinstance(target, (models.CharField, models.TextField)):
        return vendor in ("sqlite", "postgresql") and not getattr(target, "db_collation", None)
    return False


def _unsafe(node: Any) -> bool:
    """Whether ``node`` (a condition or expression) may read rows other than the row tested:
    a subquery, raw SQL, or anything this module does not know how to look into."""
    if isinstance(node, (Query, Subquery, RawSQL)):
        return True
    if isinstance(node, WhereNode):
        return any(_unsafe(c) for c in node.children)
    if isinstance(node, Lookup):
        return _unsafe(node.lhs) or _unsafe(node.rhs)
    if isinstance(node, (list, tuple, set, frozenset)):
        return any(_unsafe(v) for v in node)
    sources = getattr(node, "get_source_expressions", None)
    if sources is not None:
        return any(_unsafe(e) for e in sources())
    # A plain value is safe; an SQL node without parts (ExtraWhere, NothingNode...) is not.
    return hasattr(node, "as_sql") or hasattr(node, "resolve_expression")


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
