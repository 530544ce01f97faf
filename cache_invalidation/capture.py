"""Automatic dependency capture: what a cached value read, it is tagged with.

While ``tagged_cache.get_or_set``, ``@cached`` or ``{% cachetagged %}`` computes a value, a
capture is active in the current context. Two sources feed it:

:func:`on_execute`, an execute wrapper on every database connection, sees each statement
after Django compiled it (joins, subqueries, combined queries, ``extra()``, raw SQL) and
records the collection tag of every declared table it names (see :mod:`.tables`). Every row
a computation loads came from such a statement, so instances add nothing of their own.

For a queryset of a declared model, :class:`CaptureQuerySetMixin` hands its statement a
:class:`Narrow`: instead of its own model's collection tag,

* a query whose only conditions are ``pk=`` / ``pk__in=`` records the instance tags of the keys
  asked for (``"shop.Product:7"``) (so a later create of that key counts too);
* a query whose top-level ``WHERE`` is an ``AND`` holding an equality on one of the model's
  foreign-key columns (``filter(product_id=5)``, ``filter(product=obj)``, ``product__pk=5``,
  a related manager such as ``product.reviews``) records that value's foreign-key tag
  (``"shop.Review:product_id=5"``); ``__in`` with at most :data:`MAX_IN_VALUES` values adds one
  tag per value. See :func:`foreign_key_condition` for what falls back to the collection tag.

A narrow applies only if the statement reads the model's table once (no self-join, subquery
or second part of a combined query reads other rows of it). Saves of declared models
invalidate these automatic tags as well as the declared ones (see :mod:`.resolve`).

Captures nest: what an inner computation read is also a dependency of the outer one. Opt out
per call with ``capture=False``. Tables of undeclared models are not tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db import connections, models
from django.db.models.expressions import Col, RawSQL, Subquery
from django.db.models.lookups import Exact, In, Lookup
from django.db.models.sql.query import Query
from django.db.models.sql.where import WhereNode

from . import tables
from .registry import registry
from .resolve import key_text
from .tables import TableIndex
from .tagnames import auto_labels, foreign_key_tag, instance_tag

MAX_IN_VALUES = 50
"""A ``<foreign key>__in=[...]`` condition with more values than this is not narrowed."""

_active: ContextVar[tuple[set[str], ...]] = ContextVar("cache_invalidation_capture", default=())


class _Capture:
    """What :func:`capturing` returns: a class, not a generator, as it is entered on every miss."""

    __slots__ = ("_found", "_outer", "_token")

    def __enter__(self) -> set[str]:
        found: set[str] = set()
        outer = _active.get()
        self._found, self._outer = found, outer
        self._token = _active.set((*outer, found))
        return found

    def __exit__(self, *exc_info: object) -> None:
        _active.reset(self._token)
        found = self._found
        for outer in self._outer:
            outer.update(found)


def capturing() -> AbstractContextManager[set[str]]:
    """Collect the automatic tags of what the block reads into the yielded set."""
    return _Capture()


def is_active() -> bool:
    return bool(_active.get())


def record(tags: Any) -> None:
    stack = _active.get()
    if stack:
        stack[-1].update(tags)


class Narrow:
    """Tags narrower than the collection tag for the next statement a queryset sends.

    ``tags`` stand for the rows of the ``covers`` tables that statement reads, provided each of
    those tables is a row source exactly once in it (no self-join, subquery or second part of
    a combined query reads other rows of it); every other declared table it names adds its
    collection tags.
    """

    __slots__ = ("covers", "tags")

    def __init__(self, covers: frozenset[str], tags: list[str]) -> None:
        self.covers = covers
        self.tags = tags


_narrow: ContextVar[Narrow | None] = ContextVar("cache_invalidation_narrow", default=None)


def narrow_for(queryset: models.QuerySet) -> Narrow | None:
    """What a queryset of a declared model may record instead of its model's collection tag:
    the instance tags of the keys of a ``pk=``/``pk__in=`` lookup, or the foreign-key tags of
    :func:`foreign_key_condition`. None when the collection tag is what it depends on."""
    query = queryset.query
    where = query.where
    if not where.children or where.negated or where.connector != "AND" or query.combinator:
        # No condition either kind of narrow could use; a combined query's parts are queries
        # of their own: the statement's tables decide.
        return None
    model = queryset.model
    shape = _shapes.get(model) or _shape(model)
    pks = _pk_lookup(query, shape.pk_column)
    if pks is not None and not query.annotations:
        return Narrow(shape.row_tables, [instance_tag(lb, pk) for lb in shape.labels for pk in pks])
    condition = foreign_key_condition(queryset)
    if condition is None:
        return None
    attname, texts = condition
    label = shape.labels[0]
    return Narrow(shape.own_table, [foreign_key_tag(label, attname, text) for text in texts])


class _Key:
    """A foreign key of a model's own table, and whether the database compares its values as
    the tags spell them (exact text): ``"always"``, ``"never"``, or ``"text"`` (a key compared
    as text, plain equality on SQLite and PostgreSQL under the default collation)."""

    __slots__ = ("equality", "field", "integer")

    def __init__(self, field: models.Field) -> None:
        self.field = field
        target: Any = field.target_field  # type: ignore[attr-defined]
        self.integer = isinstance(target, (models.IntegerField, models.AutoField))
        if self.integer or isinstance(target, models.UUIDField):
            self.equality = "always"
        elif isinstance(target, (models.CharField, models.TextField)):
            self.equality = "never" if getattr(target, "db_collation", None) else "text"
        else:
            self.equality = "never"


class _Shape:
    """What capture needs of a model, fixed once the models are loaded: its labels, the tables
    one of its rows lives in (its own and its concrete parents'), its own table, and the
    foreign keys and one-to-ones of its own table by attname."""

    __slots__ = ("keys", "labels", "own_table", "pk_column", "row_tables", "table")

    def __init__(self, model: type[models.Model]) -> None:
        concrete = model._meta.concrete_model or model
        parents = concrete._meta.get_parent_list()
        self.labels = auto_labels(model)
        self.pk_column = model._meta.pk.column if model._meta.pk is not None else None
        self.row_tables = frozenset(m._meta.db_table for m in (concrete, *parents))
        self.table = concrete._meta.db_table
        self.own_table = frozenset([self.table])
        self.keys = {
            f.attname: _Key(f)
            for f in concrete._meta.local_concrete_fields
            if f.is_relation and (f.many_to_one or f.one_to_one)
        }


_shapes: dict[type[models.Model], _Shape] = {}


def _shape(model: type[models.Model]) -> _Shape:
    found = _shapes.get(model)
    if found is None:
        found = _shapes[model] = _Shape(model)
    return found


def narrowed(queryset: models.QuerySet, call: Callable[[], Any]) -> Any:
    """Run ``call`` (which sends ``queryset``'s statement) with its narrow tags pending."""
    narrow = narrow_for(queryset)
    if narrow is None and _narrow.get() is None:
        return call()  # nothing was pending, nothing to make pending
    token = _narrow.set(narrow)
    try:
        return call()
    finally:
        _narrow.reset(token)


def record_statement(found: set[str], sql: str) -> None:
    """Add to ``found`` the tags a statement sent while capturing records, consuming the
    pending narrow (it is for the queryset's own statement, not for what follows it)."""
    index = _index
    if index is None or index[0] is not registry.policies:
        index = _build_index()
    statement = index[1].statement(sql)
    narrow = _narrow.get()
    if narrow is not None:
        _narrow.set(None)
        others = statement.outside(narrow.covers)
        if others is not None:
            found.update(narrow.tags)
            found.update(others)
            return
    found.update(statement.tags)


def on_execute(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """Execute wrapper on every connection: while capturing, the statement's tables count."""
    stack = _active.get()
    if stack:
        record_statement(stack[-1], sql)
    return execute(sql, params, many, context)


def watch_connection(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
    """Put :func:`on_execute` on ``connection`` (``connection_created`` receiver; idempotent).

    It goes first in ``execute_wrappers``, so the ``pop()`` that ends a user's own
    ``connection.execute_wrapper()`` block still removes the user's wrapper."""
    if connection is not None and on_execute not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, on_execute)


_index: tuple[Any, TableIndex] | None = None


def table_index() -> TableIndex:
    """The table index of the current registry (rebuilt when its policies are replaced)."""
    index = _index
    if index is None or index[0] is not registry.policies:
        index = _build_index()
    return index[1]


def _build_index() -> tuple[Any, TableIndex]:
    global _index
    policies = registry.policies
    _index = (policies, tables.build(policies))
    return _index


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
    where = query.where
    children = where.children
    if (
        where.negated
        or where.connector != "AND"
        or not children
        or query.combinator
        or query.extra
        or query.extra_tables
        or query.extra_order_by
        or not query.alias_map
    ):
        return None
    shape = _shapes.get(model) or _shape(model)
    keys = shape.keys
    if not keys:
        return None
    alias_map = query.alias_map
    base = next(iter(alias_map))
    table = shape.table
    if alias_map[base].table_name != table:
        return None
    for alias, entry in alias_map.items():
        if query.alias_refcount.get(alias, 0) <= 0:
            continue
        if getattr(entry, "filtered_relation", None) is not None:
            return None
        if alias != base and entry.table_name == table:
            return None  # a self-join: the result depends on other rows of the table
    # A WHERE made of column-to-value comparisons needs neither the walk into nested groups
    # nor the one through every expression (the costly part).
    plain = all(map(_plain, children))
    vendor: str | None = None
    found: list[tuple[int, str, list[str]]] = []
    for lookup in children if plain else _anded(where):
        if not isinstance(lookup, (Exact, In)):
            continue
        lhs = lookup.lhs
        target = getattr(lhs, "target", None)
        if not isinstance(lhs, Col) or lhs.alias != base or target is None:
            continue
        key = keys.get(getattr(target, "attname", ""))
        if key is None or key.field is not target or key.equality == "never":
            continue
        if key.equality == "text":
            if vendor is None:
                vendor = connections[queryset.db].vendor
            if vendor not in ("sqlite", "postgresql"):
                continue
        rhs = lookup.rhs
        if key.integer and type(rhs) is int and isinstance(lookup, Exact):
            texts: list[str] | None = [str(rhs)]  # what key_text makes of it, sooner
        else:
            texts = _texts(key.field, lookup)
        if texts:
            found.append((len(texts), key.field.attname, texts))
    if not found:
        return None
    if not plain and _unsafe(where):
        return None
    if query.annotations or query.order_by:
        ordering = [o for o in query.order_by if not isinstance(o, str)]
        if any(_unsafe(e) for e in (*query.annotations.values(), *ordering)):
            return None
    _, attname, texts = min(found) if len(found) > 1 else found[0]
    return attname, texts


_PLAIN_VALUES = frozenset({int, str, bool, float, type(None), Decimal, UUID})


def _plain(node: Any) -> bool:
    """Whether ``node`` compares a column of the row to plain values, so that :func:`_unsafe`
    would find nothing in it; False when not sure (then :func:`_unsafe` looks)."""
    if not isinstance(node, Lookup) or type(node.lhs) is not Col:
        return False
    rhs = node.rhs
    if type(rhs) in _PLAIN_VALUES:
        return True
    return type(rhs) in (list, tuple) and all(type(v) in _PLAIN_VALUES for v in rhs)


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


def _pk_lookup(query: Any, pk_column: str | None) -> list[Any] | None:
    """The keys asked for, if the query's only conditions (ANDed, the caller checked) are
    ``pk=`` / ``pk__in=``."""
    alias_map = query.alias_map
    base = next(iter(alias_map)) if alias_map else query.get_initial_alias()
    keys: list[Any] | None = None
    for child in query.where.children:
        if not isinstance(child, (Exact, In)):
            return None
        lhs = child.lhs
        if getattr(getattr(lhs, "target", None), "column", None) != pk_column:
            return None
        rhs = child.rhs
        if getattr(lhs, "alias", None) != base or hasattr(rhs, "resolve_expression"):
            return None
        values = list(rhs) if isinstance(child, In) else [rhs]
        keys = values if keys is None else [v for v in keys if v in values]
    return keys


class CaptureQuerySetMixin:
    """Lets the statement of an evaluated queryset record its narrow tags (see :class:`Narrow`);
    the statement itself, whatever model it is for, is seen by :func:`on_execute`."""

    def _fetch_all(self) -> None:
        base: Any = super()
        if self._result_cache is None and _active.get():  # type: ignore[attr-defined]
            narrowed(self, base._fetch_all)  # type: ignore[arg-type]
        else:
            base._fetch_all()

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        base: Any = super()
        if _active.get():
            return narrowed(self, lambda: base.aggregate(*args, **kwargs))  # type: ignore[arg-type]
        return base.aggregate(*args, **kwargs)

    def count(self) -> int:
        base: Any = super()
        if self._result_cache is None and _active.get():  # type: ignore[attr-defined]
            return int(narrowed(self, base.count))  # type: ignore[arg-type]
        return int(base.count())

    def exists(self) -> bool:
        base: Any = super()
        if self._result_cache is None and _active.get():  # type: ignore[attr-defined]
            return bool(narrowed(self, base.exists))  # type: ignore[arg-type]
        return bool(base.exists())
