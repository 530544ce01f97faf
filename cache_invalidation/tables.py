"""Which declared tables a SQL statement reads, and the collection tags they stand for.

Capture (see :mod:`.capture`) looks at every statement a computation sends to the database,
after Django compiled it: joins the compiler added for ``order_by()``, ``select_related()``,
aggregates and ``values()`` across relations, subqueries (``Subquery``, ``Exists``, ``__in``
with a queryset), every part of ``union()``/``intersection()``/``difference()``, ``extra()``,
``RawSQL``, ``Model.objects.raw()`` and even ``cursor.execute()`` are all in its text. Each
table of a declared model (its own table, its concrete parents' tables, the table behind a
declared proxy, and the through table of a many-to-many relation with a declared side) is
found by name and stands for the collection tags that every write of such rows invalidates.

Finding a table name where none is read (in a string literal, say) only adds a tag: an entry
is then invalidated more often than needed, never less. :class:`TableIndex` is built from the
registry and rebuilt when the registry's policies change (tests swap them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.db import models

from .tagnames import collection_tag

_WORD = re.compile(r"[\w$]+")
"""An identifier: table names are found among a statement's words (one C-level pass)."""


SEEN_STATEMENTS = 2048
"""Statements whose tables an index remembers (then it forgets them all and starts over)."""


class TableIndex:
    """Table name -> collection tags, and a scanner for statements."""

    def __init__(self, tags_by_table: dict[str, tuple[str, ...]]) -> None:
        self.tags_by_table = tags_by_table
        self._by_lower = {name.lower(): name for name in tags_by_table}
        self._known = frozenset(n for n in self._by_lower if _WORD.fullmatch(n))
        # A name that is not one word ("schema"."table", a dash): looked for as text.
        self._odd = tuple(n for n in self._by_lower if n not in self._known)
        self._sources: dict[str, re.Pattern[str]] = {}
        # Statements repeat (parameters travel apart from the SQL): remember what each named.
        self._seen: dict[str, Statement] = {}
        self._counted: dict[tuple[str, str], int] = {}

    def statement(self, sql: str) -> Statement:
        """What ``sql`` names, worked out on its first sighting (at most
        :data:`SEEN_STATEMENTS` remembered: a process with many shapes starts over)."""
        found = self._seen.get(sql)
        if found is None:
            if len(self._seen) >= SEEN_STATEMENTS:
                self._seen.clear()
            found = self._seen[sql] = Statement(self, sql, self._scan(sql))
        return found

    def tables(self, sql: str) -> frozenset[str]:
        """The declared tables ``sql`` names (bare, "quoted", `backticked` or [bracketed])."""
        return self.statement(sql).tables

    def _scan(self, sql: str) -> frozenset[str]:
        low = sql.lower()
        found = set(self._known.intersection(_WORD.findall(low)))
        found.update(name for name in self._odd if name in low)
        return frozenset(self._by_lower[name] for name in found)

    def sources(self, sql: str, table: str) -> int:
        """How often ``sql`` names ``table`` as a row source (in ``FROM``/``JOIN``, a
        subquery or another part of a combined query), not as a column's qualifier."""
        count = self._counted.get((sql, table))
        if count is None:
            pattern = self._sources.get(table)
            if pattern is None:
                pattern = self._sources[table] = re.compile(
                    r"(?<![\w$])[\"`\[]?" + re.escape(table.lower()) + r"(?![\w$])(?![\"`\]]?\s*\.)"
                )
            count = len(pattern.findall(sql.lower()))
            if len(self._counted) >= SEEN_STATEMENTS:
                self._counted.clear()
            self._counted[(sql, table)] = count
        return count

    def tags(self, tables: Iterable[str]) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for table in tables:
            found.update(dict.fromkeys(self.tags_by_table.get(table, ())))
        return tuple(found)


class Statement:
    """One statement's declared tables and their collection tags, and, per set of tables a
    narrow covers, the tags of the others (see :meth:`outside`): worked out once a text."""

    __slots__ = ("_index", "_outside", "_sql", "tables", "tags")

    def __init__(self, index: TableIndex, sql: str, tables: frozenset[str]) -> None:
        self._index, self._sql = index, sql
        self.tables = tables
        self.tags = index.tags(tables)
        self._outside: dict[frozenset[str], tuple[str, ...] | None] = {}

    def outside(self, covers: frozenset[str]) -> tuple[str, ...] | None:
        """The collection tags of the statement's tables other than ``covers``, if each of
        ``covers`` it names is a row source exactly once in it; None otherwise (then tags
        narrower than a covered table's collection tag would not stand for what it read)."""
        try:
            return self._outside[covers]
        except KeyError:
            pass
        index, sql, tables = self._index, self._sql, self.tables
        once = all(index.sources(sql, t) == 1 for t in covers & tables)
        found = self._outside[covers] = index.tags(tables - covers) if once else None
        return found


def build(policy_models: Iterable[type[models.Model]]) -> TableIndex:
    """The index for the models that have a policy (through models included)."""
    tags_by_table: dict[str, dict[str, None]] = {}
    for model in policy_models:
        concrete = model._meta.concrete_model or model
        for owner in (concrete, *concrete._meta.get_parent_list()):
            tags = tags_by_table.setdefault(owner._meta.db_table, {})
            tags[collection_tag(owner._meta.label)] = None
    return TableIndex({table: tuple(tags) for table, tags in tags_by_table.items()})
