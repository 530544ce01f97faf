"""The QuerySet behaviour installed on declared models (and only on them).

Django sends no signal for ``QuerySet.update()``, ``bulk_create()`` or ``bulk_update()``, and none
when a queryset is evaluated. For each model with a policy, ``AppConfig.ready()`` calls
:func:`install`, which gives every manager of that model (``objects``, custom managers,
``_base_manager``, and so the related managers built from them) a subclass of its own class
whose queryset class also inherits :class:`BulkQuerySetMixin` (bulk writes emit events) and
:class:`CaptureQuerySetMixin` (evaluated querysets report their dependencies). Nothing
global in Django is patched, and undeclared models are untouched.

The generated classes are named after the model and stored in this module, so querysets and
managers still pickle, and managers still deconstruct as the user's own class in migrations.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from django.db import models

from .bulk import BulkQuerySetMixin
from .capture import CaptureQuerySetMixin

_MARK = "_cache_invalidation_installed"


def _publish(name: str, cls: type) -> type:
    existing = getattr(sys.modules[__name__], name, None)
    if isinstance(existing, type) and existing.__bases__ == cls.__bases__:
        return existing  # built before (a second manager of the same class)
    cls.__module__ = __name__
    cls.__qualname__ = name
    setattr(sys.modules[__name__], name, cls)
    return cls


def queryset_class_for(model: type[models.Model], base: type[models.QuerySet]) -> type:
    if getattr(base, _MARK, False):
        return base
    name = f"{model._meta.app_label}_{model.__name__}_{base.__name__}"
    return _publish(
        name, type(name, (CaptureQuerySetMixin, BulkQuerySetMixin, base), {_MARK: True})
    )


def _deconstruct(self: models.Manager) -> Any:
    # Migrations must see the user's manager class, never the generated one.
    clone = copy.copy(self)
    clone.__class__ = type(self).__bases__[0]
    return clone.deconstruct()


def install(model: type[models.Model]) -> None:
    """Give ``model``'s managers the invalidating queryset class (idempotent)."""
    meta = model._meta
    for manager in (*meta.managers, meta.base_manager):
        manager_cls = type(manager)
        if getattr(manager_cls, _MARK, False):
            continue
        # Set by Manager.from_queryset() (so on every manager), unknown to the stubs.
        qs_cls = queryset_class_for(model, manager_cls._queryset_class)  # type: ignore[attr-defined]
        name = f"{meta.app_label}_{model.__name__}_{manager_cls.__name__}"
        manager.__class__ = _publish(
            name,
            type(
                name,
                (manager_cls,),
                {"_queryset_class": qs_cls, _MARK: True, "deconstruct": _deconstruct},
            ),
        )
