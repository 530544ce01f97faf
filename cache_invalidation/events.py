"""The invalidation event: what changed, and which tags and keys to drop. Pure data, JSON only.

An event crosses process boundaries (Celery, the outbox, the dead-letter queue), so it has a
schema version and a strict decoder: :meth:`InvalidationEvent.from_dict` either returns a valid
event or raises one :class:`InvalidEventError` that lists every problem found.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMA_VERSION = 1
#: The range of ``timestamp`` (seconds since the epoch): 1970 to the year 2286. Anything else is
#: no time an event was made at, and arithmetic on it (the lag) would overflow.
MAX_TIMESTAMP = 10_000_000_000
#: Nesting allowed in ``metadata`` (objects and lists inside it).
MAX_DEPTH = 32


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
        unknown = sorted(
            _show(k) if not isinstance(k, str) else k
            for k in data
            if not isinstance(k, str) or k not in known
        )
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
            if not error and name == "timestamp" and not 0 <= value <= MAX_TIMESTAMP:
                error = f"must be between 0 and {MAX_TIMESTAMP} (seconds since the epoch), got "
                error += _show(value)
            if error:
                problems.append(f"{name!r} {error}")
            else:
                values[name] = tuple(value) if kind == "strings" else value
        if "version" in values and values["version"] != SCHEMA_VERSION:
            problems.append(
                f"'version' {_show(values['version'])} is not supported (this release reads "
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
        return None if ok else f"must be an integer, got {_show(value)}"
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not _finite(value):
            return f"must be a finite number, got {_show(value)}"
        return None if ok else f"must be a number, got {_show(value)}"
    if kind in ("str", "text", "id"):
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if kind != "str" and not value:
            return "must not be empty"
        return text_problem(value)
    if kind == "strings":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            return "must be a list of non-empty strings"
        return next((p for p in map(text_problem, value) if p), None)
    if kind == "dict":
        if not isinstance(value, Mapping):
            return "must be an object"
        return json_problem(value)
    raise AssertionError(kind)  # pragma: no cover


def _show(value: Any) -> str:
    """A short repr that cannot fail (Python refuses str() of integers over 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot travel in an event: JSON columns (PostgreSQL) and Redis keys need
    UTF-8 without NUL. Every other character is carried as it is."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it contains an unpaired surrogate)"
    return None


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not plain JSON that any store keeps as it is (None if it is): objects
    with string keys, lists, finite numbers, text without NUL, at most ``MAX_DEPTH`` deep."""
    if depth > MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} levels deep"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value.bit_length() <= 64 else "holds an integer too large for JSON"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"holds the number {value!r}"
    if isinstance(value, str):
        problem = text_problem(value)
        return f"holds text that {problem}" if problem else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"has a key that is not a string: {_show(key)}"
            problem = text_problem(key) or json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        return next((p for p in (json_problem(item, depth + 1) for item in value) if p), None)
    return f"holds a {type(value).__name__}, which is not JSON"


def encoded_size(event: InvalidationEvent) -> int:
    """Bytes of the event's compact JSON encoding (what ``MAX_EVENT_BYTES`` limits)."""
    text = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def _size_bound(event: InvalidationEvent) -> float:
    """An upper bound of :func:`encoded_size` without encoding (inf with metadata): a character
    takes at most 6 bytes (``\\u00XX``), each string 3 more (quotes, comma), the rest of
    the document under 300."""
    if event.metadata:
        return float("inf")
    strings = (*event.tags, *event.keys, *event.changed_fields)
    texts = (event.id, event.type, event.entity_type, str(event.entity_id), event.correlation_id)
    return 300 + sum(6 * len(t) + 3 for t in strings) + sum(6 * len(t) for t in texts)


def split_oversized(event: InvalidationEvent, max_bytes: int) -> list[InvalidationEvent]:
    """``event`` as parts of at most ``max_bytes`` each, its tags and keys spread over them.

    A producer calls this before publishing so that a legitimate large event (a bulk update of
    50,000 rows) is never refused by the worker's size limit. Parts get ids ``<id>.<n>``. A
    single tag or key too large for any part stays oversized, and the worker dead-letters it.
    """
    if _size_bound(event) <= max_bytes or encoded_size(event) <= max_bytes:
        return [event]
    base = replace(event, tags=(), keys=())
    room = max_bytes - encoded_size(replace(base, id=f"{event.id}.000000")) - 16
    parts: list[tuple[list[str], list[str]]] = [([], [])]
    used = 0
    for index, items in ((0, event.tags), (1, event.keys)):
        for item in items:
            cost = len(json.dumps(item, ensure_ascii=False).encode("utf-8")) + 1
            if used + cost > room and (parts[-1][0] or parts[-1][1]):
                parts.append(([], []))
                used = 0
            parts[-1][index].append(item)
            used += cost
    return [
        replace(base, id=f"{event.id}.{n}", tags=tuple(tags), keys=tuple(keys))
        for n, (tags, keys) in enumerate(parts, 1)
    ]


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


def decode_batch(payload: Any, max_event_bytes: int | None = None) -> list[InvalidationEvent]:
    """Decode a published batch (a list of event dicts); one error names the bad entries.

    With ``max_event_bytes``, an event whose compact JSON encoding is larger is refused too.
    """
    events, _, problems = decode_each(payload, max_event_bytes)
    if problems:
        raise InvalidEventError(problems)
    return events


def decode_each(
    payload: Any, max_event_bytes: int | None = None
) -> tuple[list[InvalidationEvent], list[Any], list[str]]:
    """Decode what can be decoded of a batch: ``(events, rejected items, problems)``, so one
    poisoned event does not take the valid events of its batch down with it. Raises
    :class:`InvalidEventError` only when ``payload`` is not a list at all."""
    if not isinstance(payload, list):
        raise InvalidEventError([f"a batch must be a list of events, got {type(payload).__name__}"])
    events: list[InvalidationEvent] = []
    rejected: list[Any] = []
    problems: list[str] = []
    for index, item in enumerate(payload):
        try:
            event = InvalidationEvent.from_dict(item)
        except InvalidEventError as exc:
            problems.extend(f"event {index}: {p}" for p in exc.problems)
            rejected.append(item)
            continue
        size = encoded_size(event) if max_event_bytes is not None else 0
        if max_event_bytes is not None and size > max_event_bytes:
            problems.append(
                f"event {index}: {size} bytes encoded, over the limit of {max_event_bytes} "
                "(MAX_EVENT_BYTES)"
            )
            rejected.append(item)
            continue
        events.append(event)
    return events, rejected, problems


def coalesce(events: list[InvalidationEvent]) -> list[InvalidationEvent]:
    """Merge events about the same entity and kind into one, tags and keys deduplicated."""
    merged: dict[tuple[str, str, str], InvalidationEvent] = {}
    order: list[tuple[str, str, str]] = []
    for event in events:
        ident = (event.type, event.entity_type, event.entity_id)
        if event.type == "manual" or not event.entity_id:
            ident = (event.type, event.entity_type, event.id)
        previous = merged.get(ident)
        if previous is None:
            merged[ident] = event
            order.append(ident)
            continue
        merged[ident] = InvalidationEvent(
            id=previous.id,
            type=previous.type,
            entity_type=previous.entity_type,
            entity_id=previous.entity_id,
            timestamp=previous.timestamp,
            correlation_id=previous.correlation_id,
            tags=tuple(dict.fromkeys((*previous.tags, *event.tags))),
            keys=tuple(dict.fromkeys((*previous.keys, *event.keys))),
            changed_fields=tuple(dict.fromkeys((*previous.changed_fields, *event.changed_fields))),
            metadata={**previous.metadata, **event.metadata},
        )
    return [merged[i] for i in order]
