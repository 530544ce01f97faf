"""Transports carry a committed batch of events to where it is applied.

``sync`` applies it in this process right after commit; ``celery`` sends one task per batch.
A transport's ``publish`` never raises into the user's request: a failure is logged at ERROR
with the events and sent as the ``invalidation_failed`` signal.
"""

from __future__ import annotations

from typing import Any, Protocol

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ..conf import CONFIG_SETTINGS, get_config
from ..events import InvalidationEvent

TRANSPORTS = {
    "sync": "cache_invalidation.transports.sync.SyncTransport",
    "celery": "cache_invalidation.transports.celery.CeleryTransport",
    "outbox": "cache_invalidation.transports.outbox.OutboxTransport",
}


class Transport(Protocol):
    name: str

    def publish(self, events: list[InvalidationEvent]) -> None: ...


def published(events: list[InvalidationEvent], transport: str) -> None:
    """Count a batch that left this process and show it to a recording request (the debug
    toolbar panel). Never raises."""
    from .. import metrics, recorder

    metrics.record_published(events, transport)
    recorder.published(events, transport)


def get_transport() -> Transport:

    name = get_config()["TRANSPORT"]
    transport = _built.get(name)
    if transport is None:
        transport = _built[name] = _build(name)
    return transport


#: One instance per transport name (transports keep no state); cleared with the settings.
_built: dict[str, Transport] = {}


def reset() -> None:
    _built.clear()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in CONFIG_SETTINGS:
        reset()


def _build(name: str) -> Transport:
    try:
        path = TRANSPORTS[name]
    except KeyError:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"CACHE_INVALIDATION['TRANSPORT'] is {name!r}; choose one of "
            + ", ".join(repr(t) for t in TRANSPORTS)
            + "."
        ) from None
    transport: Transport = import_string(path)()
    return transport
