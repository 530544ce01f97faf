"""Cascades along ``related``: a saved Review also invalidates its Product's tags.

For each relation the rows on the other side are found from the changed row's old and new
state (a review moved to another product reaches both products) or, for a reverse relation,
by one query on the target's key column. Their declared ``tags`` and ``keys`` are rendered
(one query for the target's watched fields, none when its templates only use ``{pk}``), and
the cascade continues along the target's own ``related`` up to ``MAX_RELATED_DEPTH`` hops.
Cycles are refused at startup (``cache_invalidation.E008``), so a cascade always ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .conf import get_config
from .registry import Policy, registry
from .resolve import resolve


def related_invalidations(
    policy: Policy,
    states: Iterable[Mapping[str, Any] | None],
    using: str,
    depth: int | None = None,
) -> tuple[list[str], list[str]]:
    """Tags and keys of the rows related to the given states of ``policy``'s model."""

    if depth is None:
        depth = int(get_config()["MAX_RELATED_DEPTH"])
    tags: dict[str, None] = {}
    keys: dict[str, None] = {}
    if depth <= 0 or not policy.related:
        return [], []
    known = [s for s in states if s is not None]
    pk_attname = policy.model._meta.pk.attname
    for relation in policy.related:
        target_policy = registry.get(relation.target)
        if target_policy is None:
            continue
        if relation.forward:
            pks = {s.get(relation.attname) for s in known} - {None}
            rows = _rows(target_policy, using, pk__in=pks) if pks else []
        else:
            owners = {s.get(pk_attname) for s in known} - {None}
            rows = (
                _rows(target_policy, using, **{f"{relation.attname}__in": owners}) if owners else []
            )
        for row in rows:
            # The related row itself did not change (its always-on tags and keys apply), or only
            # its side of a many-to-many relation did (``relation.changed``).
            row_tags, row_keys = resolve(
                target_policy, row, None, relation.changed, automatic=False
            )
            tags.update(dict.fromkeys(row_tags))
            keys.update(dict.fromkeys(row_keys))
        deeper_tags, deeper_keys = related_invalidations(target_policy, rows, using, depth - 1)
        tags.update(dict.fromkeys(deeper_tags))
        keys.update(dict.fromkeys(deeper_keys))
    return list(tags), list(keys)


def _rows(policy: Policy, using: str, **lookup: Any) -> list[dict[str, Any]]:
    model = policy.model
    pk_attname = model._meta.pk.attname
    fields = list(dict.fromkeys((pk_attname, *policy.tracked)))
    pks = lookup.get("pk__in")
    if pks is not None and fields == [pk_attname]:
        return [{pk_attname: pk} for pk in pks]  # templates use only the key: no query
    return list(model._base_manager.using(using).filter(**lookup).values(*fields))
