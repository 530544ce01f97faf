"""Key patterns: a guarded glob over one django-redis cache's keys, counted and deleted.

Used by manual invalidation (:mod:`.manual`: the admin page and ``manage.py invalidate_cache``).
:func:`bind` checks a pattern and binds it to a cache; :meth:`KeyPattern.preview` counts the
matching keys and :meth:`KeyPattern.delete` deletes them. Input mistakes raise
:class:`PatternError`, whose message says what to change.

The pattern guard (:func:`check_pattern`, :func:`bind`):

- The user types the **logical** pattern, as their code names keys (``product:*:page``); the
  cache's own ``make_key`` adds ``KEY_PREFIX`` and ``VERSION``, and that part is glob-escaped,
  so a match can never leave ``<KEY_PREFIX>:<VERSION>:`` (keys of other prefixes, other
  versions or other applications in the same Redis database are never touched). A pattern that
  already starts with the prefix is refused rather than prefixed twice.
- Wildcards are ``*`` and ``?`` only. ``[``, ``]`` and ``\\`` (character classes, escapes),
  whitespace and control characters are refused; at most :data:`MAX_PATTERN_LENGTH` characters.
- At least one character must be something else than ``*``, ``?`` and ``:``; ``*``, ``**``
  or ``*:*`` (everything) are refused.
- The app's own bookkeeping keys (``ci:...``: tag index, versions, sequence, leases, dedup
  ids, counters) are never matched; a pattern starting with ``ci:`` is refused.
- Matching uses ``SCAN ... MATCH ... COUNT`` (never ``KEYS``), at most :data:`MAX_SCAN_CALLS`
  calls; a pattern matching more than :data:`MAX_MATCHES` keys, or whose scan did not finish,
  is refused for deletion. Deletion runs ``UNLINK`` on :data:`DELETE_CHUNK` keys at a time.
- Only django-redis caches with a readable ``KEY_FUNCTION`` support patterns.

A deletion deletes **the keys its preview matched**, never more: keys that appeared since the
preview and match are left alone (preview again to delete them). For a confirmation given in a
later request (the admin page), :meth:`KeyPattern.remember` keeps the previewed keys in Redis
(``make_key("ci:pc:<nonce>")``, for :data:`CONFIRM_MAX_AGE` seconds or ``MAX_TTL`` if shorter)
and :meth:`KeyPattern.take` reads and deletes them in one transaction, so a confirmation counts
once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .backends.base import KeyScanning

from django.core.cache import caches
from django.utils.translation import gettext_lazy as _

from .backends import backend_for
from .backends.base import KeyScanning
from .conf import get_config

MAX_PATTERN_LENGTH = 200
MAX_MATCHES = 10_000
"""A pattern matching more keys than this is refused: invalidate a tag instead."""
SCAN_COUNT = 1000
MAX_SCAN_CALLS = 2000
"""About ``SCAN_COUNT * MAX_SCAN_CALLS`` keys examined at most, each call a few milliseconds."""
DELETE_CHUNK = 500
CONFIRM_MAX_AGE = 600
"""Seconds a remembered preview (and the admin page's confirmation token) stays usable."""
INTERNAL_PREFIX = "ci:"
_FORBIDDEN = "[]\\"
_WILDCARDS = "*?:"
_SENTINEL = "CIPATTERNSENTINEL7f3c"

# Messages: tests assert on them; formatted with %-style mappings (translatable).
EMPTY_PATTERN = _("Enter a key pattern.")
PATTERN_TOO_LONG = _("The pattern is %(length)d characters long; at most %(max)d are allowed.")
PATTERN_CHARACTER = _(
    "The pattern %(pattern)r contains %(char)r: the only wildcards are * and ?; [, ], "
    "backslashes, spaces and control characters are not allowed."
)
PATTERN_ONLY_WILDCARDS = _(
    "The pattern %(pattern)r would match every key of the cache; include literal text, "
    "such as product:*:page."
)
PATTERN_INTERNAL = _(
    "The pattern %(pattern)r names the app's own bookkeeping keys (ci:...), which are never "
    "deleted by pattern."
)
PATTERN_HAS_PREFIX = _(
    "Write the pattern as your code names the keys, without the cache's prefix: "
    "%(pattern)r starts with %(prefix)r, which is added for you."
)
PATTERN_NOT_REDIS = _(
    "Key patterns need a django-redis cache; the cache %(alias)r is a %(backend)s."
)
PATTERN_KEY_FUNCTION = _(
    "The cache %(alias)r has a KEY_FUNCTION that does not keep keys readable, so the keys a "
    "pattern names cannot be found."
)
PATTERN_TOO_BROAD = _(
    "The pattern %(pattern)r matches more than %(max)d keys; narrow it, or invalidate a tag."
)
PATTERN_SCAN_UNFINISHED = _(
    "The scan for %(pattern)r stopped after examining about %(examined)d keys without "
    "finishing; narrow the pattern, or invalidate a tag."
)


class PatternError(ValueError):
    """A pattern that is refused; the message says why."""


def check_pattern(pattern: str) -> str:
    """The pattern if it passes the rules that need no cache; :class:`PatternError` otherwise."""
    if not pattern:
        raise PatternError(EMPTY_PATTERN)
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(PATTERN_TOO_LONG % {"length": len(pattern), "max": MAX_PATTERN_LENGTH})
    for char in pattern:
        if char in _FORBIDDEN or char.isspace() or not char.isprintable():
            raise PatternError(PATTERN_CHARACTER % {"pattern": pattern, "char": char})
    if all(char in _WILDCARDS for char in pattern):
        raise PatternError(PATTERN_ONLY_WILDCARDS % {"pattern": pattern})
    if pattern.startswith(INTERNAL_PREFIX):
        raise PatternError(PATTERN_INTERNAL % {"pattern": pattern})
    return pattern


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class Preview:
    """What a pattern matches now. ``matched`` counts at most ``MAX_MATCHES + 1`` keys;
    ``keys`` are those Redis keys, the only ones a deletion after this preview touches."""

    matched: int
    complete: bool
    sample: tuple[str, ...]
    examined_calls: int
    keys: tuple[bytes, ...] = ()

    @property
    def too_broad(self) -> bool:
        return self.matched > MAX_MATCHES


@dataclass(frozen=True)
class KeyPattern:
    """A checked pattern bound to a django-redis cache: ``glob`` is what Redis matches."""

    pattern: str
    alias: str
    glob: str
    head: str  # the raw text make_key puts before the logical key
    tail: str

    def _backend(self) -> KeyScanning:
        backend: Any = backend_for(self.alias)  # bind() checked it is the Redis backend
        return cast("KeyScanning", backend)

    def logical(self, raw: bytes | str) -> str | None:
        """The logical key of a Redis key, or None for keys the pattern must not touch."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.startswith(self.head) or not text.endswith(self.tail):
            return None
        name = text[len(self.head) : len(text) - len(self.tail)]
        return None if name.startswith(INTERNAL_PREFIX) else name

    def _scan(self, backend: KeyScanning, stats: dict[str, Any]) -> Iterator[bytes]:
        for found, last in backend.scan_keys(self.glob, SCAN_COUNT, MAX_SCAN_CALLS):
            stats["calls"] += 1
            yield from found
            if last:
                stats["complete"] = True

    def preview(self, sample: int = 20) -> Preview:
        """Count the matching keys (at most ``MAX_MATCHES + 1``); raises if Redis fails."""
        stats: dict[str, Any] = {"calls": 0, "complete": False}
        seen: set[bytes] = set()
        names: list[str] = []
        for raw in self._scan(self._backend(), stats):
            name = self.logical(raw)
            if name is None or raw in seen:
                continue
            seen.add(raw)
            if len(names) < sample:
                names.append(name)
            if len(seen) > MAX_MATCHES:
                break
        return Preview(
            len(seen), bool(stats["complete"]), tuple(sorted(names)), stats["calls"], tuple(seen)
        )

    def _confirm_name(self, nonce: str) -> str:
        return f"{INTERNAL_PREFIX}pc:{nonce}"

    def remember(self, preview: Preview) -> str:
        """Keep ``preview``'s keys for :data:`CONFIRM_MAX_AGE` seconds; returns the nonce that
        :meth:`take` needs. Raises if Redis fails."""
        nonce = secrets.token_hex(16)
        # The first element marks the list as existing even when the preview matched nothing.
        self._backend().keep_list(self._confirm_name(nonce), [b"", *preview.keys], _confirm_ttl())
        return nonce

    def take(self, nonce: str) -> Preview | None:
        """The preview remembered under ``nonce``, forgotten in the same transaction (so only
        one caller ever gets it); None when it expired or was already taken."""
        members = self._backend().take_list(self._confirm_name(nonce))
        if not members:
            return None
        keys = tuple(raw for raw in members[1:] if self.logical(raw) is not None)
        sample = tuple(sorted(str(self.logical(raw)) for raw in keys[:20]))
        return Preview(len(keys), True, sample, 0, keys)

    def refusal(self, preview: Preview) -> str | None:
        """Why the keys of ``preview`` may not be deleted, or None."""
        if preview.too_broad:
            return str(PATTERN_TOO_BROAD % {"pattern": self.pattern, "max": MAX_MATCHES})
        if not preview.complete:
            return str(
                PATTERN_SCAN_UNFINISHED
                % {"pattern": self.pattern, "examined": preview.examined_calls * SCAN_COUNT}
            )
        return None

    def delete(self, keys: Iterable[bytes]) -> int:
        """UNLINK ``keys`` (a preview's), :data:`DELETE_CHUNK` at a time; returns how many
        existed.

        Only keys this pattern may touch are deleted, and only these: a key that appeared since
        the preview is left alone, so a deletion never reaches further than what the operator
        saw. Raises if Redis fails; what was deleted stays deleted.
        """
        backend = self._backend()
        batch = [raw for raw in dict.fromkeys(keys) if self.logical(raw) is not None]
        deleted = 0
        for start in range(0, min(len(batch), MAX_MATCHES), DELETE_CHUNK):
            deleted += backend.unlink(batch[start : min(start + DELETE_CHUNK, MAX_MATCHES)])
        return deleted


def _confirm_ttl() -> int:
    return max(1, min(CONFIRM_MAX_AGE, int(get_config()["MAX_TTL"])))  # no key outlives MAX_TTL


def bind(pattern: str, alias: str | None = None) -> KeyPattern:
    """Check ``pattern`` and bind it to the cache ``alias`` (default ``CACHE_ALIAS``)."""

    check_pattern(pattern)
    alias = alias or str(get_config()["CACHE_ALIAS"])
    backend = backend_for(alias)
    if not isinstance(backend, KeyScanning):
        backend_name = type(caches[alias]).__name__
        raise PatternError(PATTERN_NOT_REDIS % {"alias": alias, "backend": backend_name})
    full = backend.raw_key(_SENTINEL)
    if full.count(_SENTINEL) != 1:
        raise PatternError(PATTERN_KEY_FUNCTION % {"alias": alias})
    head, tail = full.split(_SENTINEL)
    if head and pattern.startswith(head):
        raise PatternError(PATTERN_HAS_PREFIX % {"pattern": pattern, "prefix": head})
    return KeyPattern(pattern, alias, _escape(head) + pattern + _escape(tail), head, tail)
