"""One process's subscription to the invalidation announcements of a Redis tag index.

Every script that deletes entries or bumps the invalidation sequence (invalidate, drain,
delete, pattern delete, ``set``) publishes, in the same atomic call, one JSON message on the
cache's channel (``make_key("ci:announce")``)::

    {"s": "<sequence>", "e": "<epoch>", "t": [<tag set names>], "k": [<keys>]}

Each bump of the sequence is announced exactly once and scripts run one at a time, so the
numbers a subscriber receives are consecutive; a skipped number means a lost message.

:class:`Subscriber` runs the subscription in a daemon thread on a connection of its own
(never shared with the request path, and without redis-py's silent reconnect: a lost
connection must be *seen*). It reports to its owner through three callbacks:

- ``live(seq, epoch)``: subscribed, with the sequence read *after* the subscription was
  confirmed, so every later bump reaches ``announced``;
- ``announced(announcement)``: a decoded message (a malformed one is reported as ``lost``:
  what it named is unknown);
- ``lost(cause)``: the connection failed or closed, a ping went unanswered for ``heartbeat``
  seconds, redis-py resubscribed behind our back, or a message could not be read. The owner
  must assume it missed announcements. The thread reconnects with a doubling pause (at most
  ``heartbeat``) and reports ``live`` again.

Nothing but the subscription runs in that thread: a slow callback would delay every
announcement behind it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..logfields import log_extra

logger = logging.getLogger("cache_invalidation")


@dataclass(frozen=True)
class Announcement:
    seq: int
    epoch: str
    #: Tag set names and keys, in the names the local cache indexes its entries by.
    names: tuple[str, ...]


def decode(data: Any) -> Announcement:
    """An announcement from a message's payload; raises ``ValueError`` naming what is wrong."""
    try:
        message = json.loads(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"announcement is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("announcement is not a JSON object")
    try:
        seq = int(message["s"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("announcement has no sequence number") from None
    names: list[str] = []
    for part in ("t", "k"):
        items = message.get(part, [])
        # cjson encodes an empty list as an empty object
        if isinstance(items, dict) and not items:
            continue
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"announcement field {part!r} is not a list of strings")
        names.extend(items)
    return Announcement(seq, str(message.get("e") or ""), tuple(names))


class _Lost(Exception):
    pass


class Subscriber:
    def __init__(
        self,
        client: Redis,
        channel: str,
        sequence: Callable[[], tuple[int, str]],
        *,
        live: Callable[[int, str], None],
        announced: Callable[[Announcement], None],
        lost: Callable[[str], None],
        heartbeat: float = 1.0,
    ) -> None:
        self.channel = channel
        self._client = client
        self._sequence = sequence
        self._live = live
        self._announced = announced
        self._lost = lost
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None
        #: The name the subscription's connection gives itself (``CLIENT SETNAME``), so that
        #: ``CLIENT LIST TYPE pubsub`` shows which connections are local caches' subscribers.
        self.client_name = "cache_invalidation:" + re.sub(r"[^!-~]", "_", channel)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="cache_invalidation-subscriber", daemon=True
        )
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _connection(self) -> Redis:
        # A pool of its own, built from the cache's connection settings, with retries off: a
        # retried read would reconnect and resubscribe silently, hiding a gap.
        pool = self._client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        kwargs.pop("retry_on_error", None)
        kwargs["retry_on_timeout"] = False
        kwargs["socket_timeout"] = None  # reads wait in get_message(timeout=...)
        kwargs["client_name"] = self.client_name
        return Redis(
            connection_pool=ConnectionPool(
                connection_class=pool.connection_class, max_connections=1, **kwargs
            )
        )

    def _run(self) -> None:
        pause = 0.05
        while not self._stop.is_set():
            try:
                self._session()
                pause = 0.05
            except _Lost as lost:
                self._lost(str(lost))
            except Exception as exc:  # a connection error, a server restart, anything
                self._lost("disconnected")
                logger.info(
                    "cache_invalidation: local cache subscription lost: %s",
                    exc,
                    extra=log_extra(stage="local"),
                )
            self._close()
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, self.heartbeat)

    def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
                pubsub.connection_pool.disconnect()
            except Exception:  # closing a dead connection may fail; it is gone anyway
                pass

    def _session(self) -> None:
        connection = self._connection()
        pubsub = self._pubsub = connection.pubsub()
        pubsub.subscribe(self.channel)
        subscribed = False
        now = time.monotonic()
        heard = now  # when the server last answered
        pinged: float | None = None
        step = min(0.25, self.heartbeat / 4)
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=step)
            now = time.monotonic()
            if message is not None:
                heard = now
                pinged = None
                kind = message["type"]
                if kind in ("subscribe", b"subscribe"):
                    if subscribed:  # redis-py reconnected on its own: messages were lost
                        raise _Lost("resubscribed")
                    subscribed = True
                    seq, epoch = self._sequence()
                    self._live(seq, epoch)
                elif kind in ("message", b"message"):
                    try:
                        announcement = decode(message["data"])
                    except ValueError as exc:
                        logger.warning(
                            "cache_invalidation: unreadable announcement on %r: %s",
                            self.channel,
                            exc,
                            extra=log_extra(stage="local"),
                        )
                        raise _Lost("unreadable") from None
                    self._announced(announcement)
            if pinged is not None and now - pinged > self.heartbeat:
                raise _Lost("ping")
            if pinged is None and now - heard >= self.heartbeat:
                pubsub.ping()
                pinged = now
        self._close()
