"""Reading ``class Meta: cache_invalidation = {...}``: a declaration in, a policy and problems out.

Every mistake becomes a :class:`~.policies.Problem` with a message naming the model, the option
and what to do (reported by the system checks); a broken declaration yields no policy.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from django.db import models

from . import keytemplates
from .keytemplates import KeyTemplate
from .policies import OPTION, OPTIONS, Policy, Problem, Relation


def policy_from_declaration(
    model: type[models.Model], declared: Any
) -> tuple[Policy | None, list[Problem]]:
    label = f"{model.__name__}.Meta.{OPTION}"
    problems: list[Problem] = []

    def problem(id_: str, msg: str, hint: str | None = None) -> None:
        problems.append(Problem(id_, model, f"{label}: {msg}", hint))

    if not isinstance(declared, Mapping):
        problem(
            "cache_invalidation.E001",
            f"must be a dict, not {type(declared).__name__}.",
            f'Write for example {{"tags": ["{model._meta.model_name}:{{pk}}"]}}.',
        )
        return None, problems
    for name in declared:
        if name not in OPTIONS:
            close = difflib.get_close_matches(_text(name), OPTIONS, n=1)
            problem(
                "cache_invalidation.E002",
                f"unknown option {_show(name)}.",
                (f"Did you mean {close[0]!r}? " if close else "")
                + "Valid options are: "
                + ", ".join(OPTIONS)
                + ".",
            )
    resolver = _FieldResolver(model)
    # The key is always remembered: automatic tags name the row by it.
    tracked: dict[str, None] = {resolver.pk_attname: None}

    def templates(option: str, value: Any) -> tuple[KeyTemplate, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            problem(
                "cache_invalidation.E003",
                f"option {option!r} must be a list of strings, not {type(value).__name__}.",
                f'Write for example "{option}": ["{model._meta.model_name}:{{pk}}"].',
            )
            return ()
        parsed = []
        for source in value:
            if not isinstance(source, str):
                problem(
                    "cache_invalidation.E003",
                    f"option {option!r} must contain only strings, found "
                    f"{type(source).__name__} {_show(source)}.",
                )
                continue
            try:
                template = keytemplates.parse(source)
            except keytemplates.TemplateError as exc:
                problem("cache_invalidation.E005", f"{_kind(option)} {exc}.")
                continue
            ok = True
            for name in template.fields:
                error = resolver.template_field_error(name)
                if error:
                    problem(
                        "cache_invalidation.E004",
                        f"{_kind(option)} {source!r} {error[0]}",
                        error[1],
                    )
                    ok = False
                else:
                    tracked[resolver.attname(name)] = None
            if ok:
                parsed.append(template)
        return tuple(parsed)

    tags = templates("tags", declared.get("tags", ()))
    keys = templates("keys", declared.get("keys", ()))
    on_fields: list[tuple[str, tuple[KeyTemplate, ...]]] = []
    raw_on_fields = declared.get("on_fields", {})
    if not isinstance(raw_on_fields, Mapping):
        problem(
            "cache_invalidation.E003",
            f"option 'on_fields' must be a dict of field name -> list of tag templates, not "
            f"{type(raw_on_fields).__name__}.",
            'Write for example "on_fields": {"price": ["pricing:{pk}"]}.',
        )
        raw_on_fields = {}
    for field_name, value in raw_on_fields.items():
        resolved = resolver.change_field(field_name)
        if resolved is None:
            problem(
                "cache_invalidation.E006",
                f"on_fields names {_show(field_name)}, which is no field of {model._meta.label}.",
                resolver.suggest(field_name),
            )
            continue
        name, attname = resolved
        if attname is not None:
            tracked[attname] = None
        on_fields.append((name, templates(f"on_fields[{field_name!r}]", value)))
    related: list[Relation] = []
    raw_related = declared.get("related", ())
    if isinstance(raw_related, str) or not isinstance(raw_related, (list, tuple)):
        problem(
            "cache_invalidation.E003",
            f"option 'related' must be a list of relation names, not {type(raw_related).__name__}.",
            'Write for example "related": ["product"].',
        )
        raw_related = ()
    for name in raw_related:
        relation = resolver.relation(name)
        if isinstance(relation, str):
            problem(
                "cache_invalidation.E007",
                f"related names {_show(name)}, {relation}",
                resolver.suggest_relation(name),
            )
            continue
        related.append(relation)
        if relation.forward:
            tracked[relation.attname] = None
    if problems:
        return None, problems
    return (
        Policy(
            model=model,
            tags=tags,
            keys=keys,
            on_fields=tuple(on_fields),
            related=tuple(related),
            tracked=tuple(tracked),
            names={att: resolver.name_of(att) for att in tracked},
        ),
        problems,
    )


def _show(value: Any) -> str:
    """repr() for a message; never fails (Python refuses str() of huge integers)."""
    try:
        return repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _show(value)


def _kind(option: str) -> str:
    if option == "tags":
        return "tag template"
    if option == "keys":
        return "key template"
    return f"{option} template"


class _FieldResolver:
    """Maps names used in declarations onto the model's fields."""

    def __init__(self, model: type[models.Model]) -> None:
        meta = model._meta
        self.model = model
        self.pk_attname = meta.pk.attname if meta.pk is not None else "id"
        self.by_attname: dict[str, models.Field] = {}
        self.relations: dict[str, models.Field] = {}
        for f in meta.concrete_fields:
            self.by_attname[f.attname] = f
            if f.name != f.attname:
                self.relations[f.name] = f
        self.m2m: set[str] = {f.name for f in meta.many_to_many}
        self.m2m.update(
            rel.get_accessor_name() or "" for rel in meta.related_objects if rel.many_to_many
        )

    def attname(self, name: str) -> str:
        return self.pk_attname if name == "pk" else name

    def name_of(self, attname: str) -> str:
        f = self.by_attname.get(attname)
        return f.name if f is not None else attname

    def template_field_error(self, name: str) -> tuple[str, str] | None:
        if name == "pk" or name in self.by_attname:
            return None
        if name in self.relations:
            attname = self.relations[name].attname
            return (
                f"names the relation {name!r}; templates take stored values only.",
                f"Use '{{{attname}}}' (the stored key) instead of '{{{name}}}'.",
            )
        if name in self.m2m:
            return (
                f"names the many-to-many relation {name!r}, which has no single value.",
                f"Use on_fields {{{name!r}: [...]}} to react to changes of the relation.",
            )
        return (
            f"names no field of {self.model._meta.label}.",
            self.suggest(name),
        )

    def change_field(self, name: Any) -> tuple[str, str | None] | None:
        if not isinstance(name, str):
            return None
        if name in self.by_attname:
            return self.name_of(name), name
        if name in self.relations:
            return name, self.relations[name].attname
        if name in self.m2m:
            return name, None
        return None

    def relation(self, name: Any) -> Relation | str:
        """The relation called ``name``, or why it cannot be one."""
        if not isinstance(name, str):
            return f"which is not a string but {type(name).__name__}."
        meta = self.model._meta
        try:
            found = meta.get_field(name)
        except Exception:
            found = None
        if found is None:
            for rel in meta.related_objects:
                if rel.get_accessor_name() == name:
                    found = rel
                    break
        if found is None:
            return f"which is no relation of {meta.label}."
        if found.many_to_many:
            return (
                "a many-to-many relation; its changes arrive as m2m_changed events on both "
                "sides already."
            )
        if not found.is_relation or found.related_model is None:
            return f"which is a plain field of {meta.label}, not a relation."
        if found.concrete:  # ForeignKey / OneToOneField held by this model
            return Relation(name, found.related_model, found.attname, forward=True)
        if not isinstance(found, models.ForeignObjectRel):  # e.g. a GenericRelation
            return f"which is not a foreign key, one-to-one or reverse relation of {meta.label}."
        # A reverse relation: the target holds the key.
        return Relation(name, found.related_model, found.field.attname, forward=False)

    def suggest_relation(self, name: Any) -> str:
        meta = self.model._meta
        choices = [
            f.name for f in meta.get_fields() if f.is_relation and not f.many_to_many and f.concrete
        ]
        choices += [r.get_accessor_name() or "" for r in meta.related_objects if not r.many_to_many]
        close = difflib.get_close_matches(_text(name), choices, n=1)
        prefix = f"Did you mean {close[0]!r}? " if close else ""
        return prefix + "Relations: " + (", ".join(sorted(choices)) or "none") + "."

    def suggest(self, name: Any) -> str:
        choices = ["pk", *self.by_attname, *self.m2m]
        close = difflib.get_close_matches(_text(name), choices, n=1)
        prefix = f"Did you mean {close[0]!r}? " if close else ""
        return prefix + "Available: " + ", ".join(sorted(set(choices))) + "."
