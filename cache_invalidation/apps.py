"""App configuration: teaches Django the ``cache_invalidation`` Meta option and wires receivers.

Django rejects unknown ``Meta`` names, so this module adds ``"cache_invalidation"`` to
``django.db.models.options.DEFAULT_NAMES`` when it is imported, which Django does for every
installed app before any model class is created. The option is then taken out of each model's
``_meta.original_attrs`` so it never appears in migrations: it is runtime behaviour, not schema.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig, apps
from django.db.models import options, signals
from django.db.models.signals import class_prepared

OPTION = "cache_invalidation"

if OPTION not in options.DEFAULT_NAMES:
    options.DEFAULT_NAMES = (*options.DEFAULT_NAMES, OPTION)


def _keep_out_of_migrations(sender: Any, **kwargs: Any) -> None:
    sender._meta.original_attrs.pop(OPTION, None)


class_prepared.connect(_keep_out_of_migrations, dispatch_uid="cache_invalidation.migrations")


class CacheInvalidationConfig(AppConfig):
    name = "cache_invalidation"
    verbose_name = "Cache invalidation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed  # noqa: PLC0415 - imported before the app registry is ready
        from django.db import connections  # noqa: PLC0415 - imported before the app registry is ready
        from django.db.backends.signals import connection_created  # noqa: PLC0415 - imported before the app registry is ready

        from . import capture, checks, registry, storm  # noqa: PLC0415 - imported before the app registry is ready

        checks.register()
        built = registry.build(apps.get_models())
        registry.registry.policies = built.policies
        registry.registry.problems = built.problems
        storm.reset()
        connect(built.policies)
        # Capture sees every statement: connections opened from now on, and any already open.
        connection_created.connect(capture.watch_connection, dispatch_uid="ci.capture")
        for connection in connections.all(initialized_only=True):
            capture.watch_connection(connection=connection)
        setting_changed.connect(_reinstall, dispatch_uid="ci.reinstall")


def _reinstall(setting: str, **kwargs: Any) -> None:
    """After the app registry's caches were cleared (``override_settings(INSTALLED_APPS=...)``
    enters or leaves), models hand out fresh copies of their managers and a new
    ``_base_manager``: give those the invalidating queryset class again."""
    if setting == "INSTALLED_APPS":
        from . import registry  # noqa: PLC0415 - imported before the app registry is ready

        connect(registry.registry.policies)


def connect(policies: dict[Any, Any]) -> None:
    """Connect the receivers for every model with a policy (idempotent)."""
    from . import outbox, queryset, receivers  # noqa: PLC0415 - imported before the app registry is ready

    through_models = set()
    for model in policies:
        queryset.install(model)
        label = model._meta.label
        signals.post_init.connect(
            receivers.on_post_init, sender=model, dispatch_uid=f"ci.post_init.{label}"
        )
        if model._meta.auto_created:  # a through table: Django sends it no write signals
            receivers.send_write_signals(model)
            outbox.wrap_save_base(model)
            continue
        signals.pre_save.connect(
            receivers.on_pre_save, sender=model, dispatch_uid=f"ci.pre_save.{label}"
        )
        signals.post_save.connect(
            receivers.on_post_save, sender=model, dispatch_uid=f"ci.post_save.{label}"
        )
        signals.pre_delete.connect(
            receivers.on_pre_delete, sender=model, dispatch_uid=f"ci.pre_delete.{label}"
        )
        signals.post_delete.connect(
            receivers.on_post_delete, sender=model, dispatch_uid=f"ci.post_delete.{label}"
        )
        receivers.wrap_refresh_from_db(model)
        outbox.wrap_save_base(model)
        meta = model._meta
        for field in meta.many_to_many:
            through_models.add(receivers.register_m2m(field))
        for rel in meta.related_objects:
            if rel.many_to_many:
                through_models.add(receivers.register_m2m(rel.field))
    for through in through_models:
        signals.m2m_changed.connect(
            receivers.on_m2m_changed,
            sender=through,
            dispatch_uid=f"ci.m2m_changed.{through._meta.label}",
        )
