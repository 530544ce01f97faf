"""Transports carry a committed batch of events to where it is applied.

``sync`` applies it in this process right after commit; ``celery`` sends one task per batch;
``outbox`` writes each event as a row inside the transaction and delivers the batch after it.
A transport's ``publish`` never raises into the user's request: a failure is logged at ERROR
with the events and sent as the ``invalidation_failed`` signal.

Producers talk to a transport through three calls (:class:`Transport`), and never ask which
one is configured: ``stage(event, batch, using)`` inside the transaction that made the change,
``committed(events, batch, using)`` once it committed, and ``publish(events)`` for events that
belong to no transaction. :class:`BaseTransport` gives the first two for transports with
nothing to write inside a transaction.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .. import metrics, recorder
from ..conf import CONFIG_SETTINGS, get_config
from ..events import InvalidationEvent, coalesce, split_oversized

TRANSPORTS = {
    "sync": "cache_invalidation.transports.sync.SyncTransport",
    "celery": "cache_invalidation.transports.celery.CeleryTransport",
    "outbox": "cache_invalidation.transports.outbox.OutboxTransport",
}


class Transport(Protocol):
    name: str

    def publish(self, events: list[InvalidationEvent]) -> None:
        """Carry committed ``events`` (already merged and split) on; never raises."""

    def stage(self, event: InvalidationEvent, batch: uuid.UUID, using: str) -> None:
        """``event`` was emitted inside a transaction on ``using`` (batch ``batch``)."""

    def committed(self, events: list[InvalidationEvent], batch: uuid.UUID, using: str) -> None:
        """The transaction of ``batch`` committed; ``events`` are those that survived it."""


def prepared(events: list[InvalidationEvent]) -> list[InvalidationEvent]:
    """``events`` merged per entity, and split where one is over ``MAX_EVENT_BYTES`` (the
    worker would refuse it)."""
    limit = int(get_config()["MAX_EVENT_BYTES"])
    return [part for event in coalesce(events) for part in split_oversized(event, limit)]


class BaseTransport:
    """A transport with nothing to write inside the transaction: a committed batch is
    published as it is."""

    name = ""

    def publish(self, events: list[InvalidationEvent]) -> None:
        raise NotImplementedError

    def stage(self, event: InvalidationEvent, batch: uuid.UUID, using: str) -> None:
        """Nothing to do before the commit."""

    def committed(self, events: list[InvalidationEvent], batch: uuid.UUID, using: str) -> None:
        self.publish(prepared(events))


def published(events: list[InvalidationEvent], transport: str) -> None:
    """Count a batch that left this process and show it to a recording request (the debug
    toolbar panel). Never raises."""

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
        raise ImproperlyConfigured(
            f"CACHE_INVALIDATION['TRANSPORT'] is {name!r}; choose one of "
            + ", ".join(repr(t) for t in TRANSPORTS)
            + "."
        ) from None
    transport: Transport = import_string(path)()
    return transport
