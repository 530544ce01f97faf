"""Per-model policies built from ``class Meta: cache_invalidation = {...}``, and their registry.

:func:`build` reads every installed model once at startup and returns one frozen
:class:`~.policies.Policy` per model that declares (or inherits) a declaration, or that
declared models depend on (:mod:`.implicit`), plus the problems found in broken declarations
(:mod:`.declarations`). Problems are reported by the system checks in :mod:`.checks`; a model
whose declaration is broken gets no policy, so a typo can never invalidate the wrong thing
silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from .declarations import policy_from_declaration
from .implicit import implicit_policies
from .policies import OPTION as OPTION
from .policies import Policy as Policy
from .policies import Problem as Problem
from .policies import Relation as Relation
from .policies import merge, track_foreign_keys


@dataclass
class Registry:
    policies: dict[type[models.Model], Policy] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def get(self, model: type[models.Model]) -> Policy | None:
        return self.policies.get(model)


registry = Registry()


def declaration_of(model: type[models.Model]) -> Any:
    return getattr(model._meta, OPTION, None)


def build(model_list: Iterable[type[models.Model]]) -> Registry:
    """Validate every declaration and build the policies (a new :class:`Registry`)."""
    result = Registry()
    own: dict[type[models.Model], tuple[Policy | None, bool]] = {}
    for model in model_list:
        declared = declaration_of(model)
        if declared is None:
            own[model] = (None, False)
            continue
        policy, problems = policy_from_declaration(model, declared)
        result.problems.extend(problems)
        own[model] = (policy, bool(problems))
    for model, (policy, broken) in own.items():
        if broken:
            continue
        merged = [policy] if policy else []
        # Proxies and multi-table children write their parents' rows: apply those rules too.
        for ancestor in _ancestors(model):
            inherited, ancestor_broken = own.get(ancestor) or (None, False)
            if inherited is None and not ancestor_broken and ancestor not in own:
                declared = declaration_of(ancestor)
                if declared is not None:
                    inherited, found = policy_from_declaration(ancestor, declared)
                    ancestor_broken = bool(found)
            if inherited is not None and not ancestor_broken:
                merged.append(inherited)
        if merged:
            result.policies[model] = track_foreign_keys(merge(model, merged))
    result.problems.extend(_relation_problems(result.policies))
    result.policies.update(implicit_policies(result.policies, own))
    return result


def _relation_problems(policies: dict[type[models.Model], Policy]) -> list[Problem]:
    """Targets without a declaration, and cycles (which could cascade forever)."""
    problems: list[Problem] = []
    declared = {m._meta.concrete_model for m in policies}
    for model, policy in policies.items():
        for relation in policy.related:
            if relation.target._meta.concrete_model not in declared:
                problems.append(
                    Problem(
                        "cache_invalidation.E007",
                        model,
                        f"{model.__name__}.Meta.{OPTION}: related names {relation.name!r}, which "
                        f"points at {relation.target._meta.label}, a model with no "
                        f"{OPTION} declaration.",
                        f"Declare {OPTION} on {relation.target._meta.label}, or drop "
                        f"{relation.name!r} from related.",
                    )
                )
    reported: set[frozenset[str]] = set()

    def visit(model: type[models.Model], path: list[type[models.Model]]) -> None:
        policy = policies.get(model)
        if policy is None:
            return
        for relation in policy.related:
            target = relation.target
            if target in path:
                cycle = [*path[path.index(target) :], target]
                names = frozenset(m._meta.label for m in cycle)
                if names not in reported:
                    reported.add(names)
                    chain = " -> ".join(m._meta.label for m in cycle)
                    problems.append(
                        Problem(
                            "cache_invalidation.E008",
                            cycle[0],
                            f"{cycle[0].__name__}.Meta.{OPTION}: related relations form a cycle: "
                            f"{chain}.",
                            "Keep 'related' pointing one way (for example from the child to its "
                            "parent) and tag the other direction explicitly.",
                        )
                    )
                continue
            visit(target, [*path, target])

    for model in policies:
        visit(model, [model])
    return problems


def _ancestors(model: type[models.Model]) -> list[type[models.Model]]:
    seen: list[type[models.Model]] = []
    meta = model._meta
    candidates = list(meta.get_parent_list())
    if meta.proxy and meta.concrete_model is not None:
        candidates.append(meta.concrete_model)
        candidates.extend(meta.concrete_model._meta.get_parent_list())
    if meta.proxy_for_model is not None:
        candidates.append(meta.proxy_for_model)
    for candidate in candidates:
        if candidate is not model and candidate not in seen:
            seen.append(candidate)
    return seen
