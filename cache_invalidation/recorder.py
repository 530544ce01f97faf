"""What one request did to the cache: reads, writes and invalidations (for the debug toolbar).

A :class:`Recording` is bound to a context variable by :func:`start` (the debug-toolbar panel
does it for each request it instruments) and filled by ``tagged_cache`` and the transports.
When nothing is recording, each hook costs one ``ContextVar.get()``: no allocation, no I/O.
Being a context variable, a recording follows the request into ``sync_to_async`` and
``async_to_sync`` calls and never sees another thread's or task's work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

_current: ContextVar[Recording | None] = ContextVar("cache_invalidation_recording", default=None)


@dataclass
class Recording:
    #: ``{"key", "hit", "tags", "alias"}`` per read; tags of a hit are known only for
    #: ``get_or_set`` (the entry keeps them), not for a plain ``get``.
    reads: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"key", "tags", "timeout", "stored", "alias"}``; ``stored`` is False when a
    #: conditional store was refused (a tag was invalidated while computing).
    writes: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"key", "alias"}`` per ``tagged_cache.delete``.
    deletes: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"source", "transport", "event_id", "type", "model", "tags", "keys"}``: events
    #: published (after commit) and direct ``invalidate_tags`` calls (source ``"direct"``).
    invalidations: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "writes": self.writes,
            "deletes": self.deletes,
            "invalidations": self.invalidations,
        }


def start() -> Token[Recording | None]:
    """Start recording in the current context; pass the token to :func:`stop`."""
    return _current.set(Recording())


def stop(token: Token[Recording | None]) -> Recording | None:
    """Stop recording; return what was recorded."""
    recording = _current.get()
    try:
        _current.reset(token)
    except ValueError:  # reset from another context: just stop recording here
        _current.set(None)
    return recording


def current() -> Recording | None:
    """The active recording, or None (the common case: one ContextVar lookup)."""
    return _current.get()


def read(cache: Any, key: str, hit: bool, tags: Sequence[str] = ()) -> None:
    """A ``TaggedCache`` read ``key`` (``cache.alias`` is only looked at when recording)."""
    recording = _current.get()
    if recording is not None:
        recording.reads.append({"alias": cache.alias, "key": key, "hit": hit, "tags": list(tags)})


def write(cache: Any, key: str, tags: Sequence[str], timeout: int, stored: bool) -> None:
    recording = _current.get()
    if recording is not None:
        recording.writes.append(
            {
                "alias": cache.alias,
                "key": key,
                "tags": list(tags),
                "timeout": timeout,
                "stored": bool(stored),
            }
        )


def delete(cache: Any, key: str) -> None:
    recording = _current.get()
    if recording is not None:
        recording.deletes.append({"alias": cache.alias, "key": key})


def published(events: Iterable[Any], transport: str) -> None:
    """Events published through ``transport`` (after their transaction committed)."""
    recording = _current.get()
    if recording is None:
        return
    for event in events:
        recording.invalidations.append(
            {
                "source": "event",
                "transport": transport,
                "event_id": event.id,
                "type": event.type,
                "model": event.entity_type or "manual",
                "tags": list(event.tags),
                "keys": list(event.keys),
            }
        )


def invalidated(cache: Any, tags: Sequence[str]) -> None:
    """A direct ``invalidate_tags`` call (in-process, no event)."""
    recording = _current.get()
    if recording is not None:
        recording.invalidations.append(
            {
                "source": "direct",
                "transport": f"in-process ({cache.alias})",
                "event_id": "",
                "type": "invalidate_tags",
                "model": "",
                "tags": list(tags),
                "keys": [],
            }
        )
