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
from dataclasses import dataclass

from django.db import models

from .resolve import collection_tag

#: A table name as SQL spells it: bare, "quoted", `backticked` or [bracketed], not part of a
#: longer identifier. What follows tells a column reference ("t"."col") from a row source.
_EDGE_BEFORE = r"(?<![\w$])[\"`\[]?"
_EDGE_AFTER = r"[\"`\]]?(?![\w$])"


@dataclass(frozen=True)
class Mentions:
    """The declared tables a statement names: every one, and how often each is a row source
    (named in ``FROM``/``JOIN``, not as the qualifier of a column)."""

    tables: frozenset[str]
    sources: dict[str, int]


class TableIndex:
    """Table name -> collection tags, and a scanner for statements."""

    def __init__(self, tags_by_table: dict[str, tuple[str, ...]]) -> None:
        self.tags_by_table = tags_by_table
        self._lower = {name.lower(): name for name in tags_by_table}
        names = sorted(self._lower, key=len, reverse=True)  # the longest name first
        self._pattern = (
            re.compile(
                _EDGE_BEFORE + "(" + "|".join(re.escape(n) for n in names) + ")" + _EDGE_AFTER,
                re.IGNORECASE,
            )
            if names
            else None
        )

    def scan(self, sql: str) -> Mentions:
        if self._pattern is None or not sql:
            return Mentions(frozenset(), {})
        tables: set[str] = set()
        sources: dict[str, int] = {}
        for match in self._pattern.finditer(sql):
            table = self._lower[match.group(1).lower()]
            tables.add(table)
            rest = sql[match.end() : match.end() + 8].lstrip()
            if not rest.startswith("."):  # "t"."col" qualifies a column of a source
                sources[table] = sources.get(table, 0) + 1
        return Mentions(frozenset(tables), sources)

    def tags(self, tables: Iterable[str]) -> list[str]:
        found: dict[str, None] = {}
        for table in tables:
            found.update(dict.fromkeys(self.tags_by_table.get(table, ())))
        return list(found)


def build(policy_models: Iterable[type[models.Model]]) -> TableIndex:
    """The index for the models that have a policy (through models included)."""
    tags_by_table: dict[str, dict[str, None]] = {}
    for model in policy_models:
        concrete = model._meta.concrete_model or model
        for owner in (concrete, *concrete._meta.get_parent_list()):
            tags = tags_by_table.setdefault(owner._meta.db_table, {})
            tags[collection_tag(owner._meta.label)] = None
    return TableIndex({table: tuple(tags) for table, tags in tags_by_table.items()})
