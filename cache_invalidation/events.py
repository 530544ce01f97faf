"""The invalidation event: what changed, and which tags and keys to drop. Pure data, JSON only.

An event crosses process boundaries (Celery, the outbox, the dead-letter queue), so it has a
schema version and a strict decoder: :meth:`InvalidationEvent.from_dict` either returns a valid
event or raises one :class:`InvalidEventError` that lists every problem found.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class InvalidEventError(ValueError):
    """A dict could not be decoded into an :class:`InvalidationEvent`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("malformed invalidation event: " + "; ".join(problems))


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class InvalidationEvent:
    """One change and the cache entries it makes stale.

    ``type`` reads like ``"shop.Product.updated"`` (``created``/``updated``/``deleted``/
    ``m2m_changed``), or ``"manual"`` for :func:`cache_invalidation.invalidate`.
    ``timestamp`` is seconds since the epoch at the time the event was made (before commit).
    """

    type: str
    tags: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    entity_type: str = ""
    entity_id: str = ""
    changed_fields: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    correlation_id: str = ""
    timestamp: float = field(default_factory=time.time)
    version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``from_dict(e.to_dict()) == e``."""
        return {
            "version": self.version,
            "id": self.id,
            "type": self.type,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "timestamp": self.timestamp,
            "correlation_id": self.correlation_id,
            "tags": list(self.tags),
            "keys": list(self.keys),
            "changed_fields": list(self.changed_fields),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Any) -> InvalidationEvent:
        """Decode and validate; raise :class:`InvalidEventError` naming every bad field."""
        if not isinstance(data, Mapping):
            raise InvalidEventError([f"expected an object, got {type(data).__name__}"])
        problems: list[str] = []
        known = set(_FIELDS)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            problems.append("unknown field(s): " + ", ".join(unknown))
        values: dict[str, Any] = {}
        for name, (kind, required) in _FIELDS.items():
            if name not in data:
                if required:
                    problems.append(f"{name!r} is required")
                continue
            value = data[name]
            error = _check(kind, value)
            if error:
                problems.append(f"{name!r} {error}")
            else:
                values[name] = tuple(value) if kind == "strings" else value
        if "version" in values and values["version"] != SCHEMA_VERSION:
            problems.append(
                f"'version' {values['version']!r} is not supported (this release reads "
                f"version {SCHEMA_VERSION})"
            )
        if problems:
            raise InvalidEventError(problems)
        return cls(**values)


_FIELDS: dict[str, tuple[str, bool]] = {
    "version": ("int", True),
    "id": ("id", True),
    "type": ("text", True),
    "entity_type": ("str", False),
    "entity_id": ("str", False),
    "timestamp": ("number", True),
    "correlation_id": ("str", False),
    "tags": ("strings", False),
    "keys": ("strings", False),
    "changed_fields": ("strings", False),
    "metadata": ("dict", False),
}


def _check(kind: str, value: Any) -> str | None:
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {value!r}"
    if kind in ("str", "text", "id"):
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if kind != "str" and not value:
            return "must not be empty"
        return None
    if kind == "strings":
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v for v in value
        ):
            return "must be a list of non-empty strings"
        return None
    if kind == "dict":
        return None if isinstance(value, Mapping) else "must be an object"
    raise AssertionError(kind)  # pragma: no cover


def union(events: Iterable[InvalidationEvent]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tags and keys of ``events``, each once, in first-seen order."""
    tags: dict[str, None] = {}
    keys: dict[str, None] = {}
    for event in events:
        tags.update(dict.fromkeys(event.tags))
        keys.update(dict.fromkeys(event.keys))
    return tuple(tags), tuple(keys)


def encode_batch(events: Iterable[InvalidationEvent]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


def decode_batch(payload: Any) -> list[InvalidationEvent]:
    """Decode a published batch (a list of event dicts); one error names the bad entries."""
    if not isinstance(payload, list):
        raise InvalidEventError([f"a batch must be a list of events, got {type(payload).__name__}"])
    events, problems = [], []
    for index, item in enumerate(payload):
        try:
            events.append(InvalidationEvent.from_dict(item))
        except InvalidEventError as exc:
            problems.extend(f"event {index}: {p}" for p in exc.problems)
    if problems:
        raise InvalidEventError(problems)
    return events
