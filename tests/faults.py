"""Fault injection for the reliability suite: a TCP proxy the test controls, and table rows.

:class:`TcpProxy` sits between a client (django-redis, psycopg, kombu) and a real server on
127.0.0.1. The test makes the server *slow* (:meth:`TcpProxy.stall`: bytes stop flowing, so
every call runs into the client's socket timeout), *down* (:meth:`TcpProxy.down`: open
connections are closed and new ones refused) or brings it back (:meth:`TcpProxy.up`). With
:meth:`TcpProxy.on_match` the fault starts at an exact point of the conversation: when the
client sends bytes matching a regular expression (a Lua script's SHA, ``INSERT INTO
"cache_invalidation_deadletter"``), optionally after forwarding them, so the server has done
the work and only the reply is lost. Nothing is mocked: the client talks to the real server
through real sockets and sees real timeouts and resets.

:func:`row` marks a test as a reliability test and carries its row of the table in
``docs/reliability.rst`` (see ``tests/reliability_table.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from typing import Any

import pytest

#: The columns of the table in docs/reliability.rst.
COLUMNS = ("Fault or input", "How the test makes it", "Outcome the test asserts")


#: Hypothesis examples are sized for CI; RELIABILITY_SCALE=10 runs ten times as many.
SCALE = max(1, int(os.environ.get("RELIABILITY_SCALE", "1")))


def examples(n: int) -> int:
    """``max_examples`` for a property: ``n`` in CI, ``n * RELIABILITY_SCALE`` when asked."""
    return n * SCALE


def row(fault: str, how: str, outcome: str) -> Any:
    """The ``reliability`` marker, carrying this test's row of the reliability table."""
    return pytest.mark.reliability(fault=fault, how=how, outcome=outcome)


class TcpProxy:
    """A TCP proxy on ``127.0.0.1:<port>`` in front of ``127.0.0.1:<target_port>``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.state = "up"
        self._lock = threading.Condition()
        self._trigger: tuple[re.Pattern[bytes], str, bool] | None = None
        self.triggered = threading.Event()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = self._listen(0)
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- control ----------------------------------------------------------------------------
    def stall(self) -> None:
        """Stop moving bytes: the server looks slower than any socket timeout."""
        self._set("stall")

    def down(self) -> None:
        """Close every open connection and refuse new ones, as a dead server does."""
        self._set("down")
        self._close_listener()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            _close(conn)

    def up(self) -> None:
        """Forward again (new connections are accepted again after :meth:`down`)."""
        if self._listener is None and not self._closed:
            self._listen(self.port)
        self._set("up")

    def on_match(self, pattern: bytes, then: str, forward: bool = True) -> None:
        """When the client sends bytes matching ``pattern``, go ``then`` ("stall", "down" or
        "hold").

        ``forward``: the matching bytes reach the server first (it runs the command; only the
        reply is lost), else they are dropped with the connection. "hold" (with
        ``forward=False``) stalls and keeps the matching bytes: they reach the server when
        :meth:`up` is called, so the test runs something at that exact point.
        """
        assert then in ("stall", "down", "hold")
        self.triggered.clear()
        with self._lock:
            self._trigger = (re.compile(pattern, re.DOTALL), then, forward)

    def close(self) -> None:
        self._closed = True
        self.down()

    # -- plumbing ---------------------------------------------------------------------------
    def _set(self, state: str) -> None:
        with self._lock:
            self.state = state
            self._lock.notify_all()

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(100):  # the port may linger for a moment after down()
            try:
                listener.bind(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"TcpProxy could not listen on port {port} again")
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return int(listener.getsockname()[1])

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            if self.state == "down":
                _close(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _wait_to_move(self) -> bool:
        """Block while stalled; False once the connection must end (down)."""
        with self._lock:
            while self.state == "stall":
                self._lock.wait(0.05)
            return self.state == "up"

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        window = b""
        try:
            # Inside the try: the other direction's thread (or down()) may have closed the
            # pair before this thread first runs.
            src.settimeout(0.05)
            while True:
                if not self._wait_to_move():
                    return
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                if from_client and self._trigger is not None:
                    window = (window + data)[-8192:]
                    trigger = self._trigger
                    if trigger[0].search(window):
                        with self._lock:
                            self._trigger = None
                        if trigger[2]:
                            dst.sendall(data)
                        if trigger[1] == "down":
                            # Before cutting: the client then goes on (and the test checks the
                            # trigger) possibly before this thread runs again.
                            self.triggered.set()
                            self.down()
                        else:
                            # After stalling: a test that sees the trigger may call up() next.
                            self.stall()
                            self.triggered.set()
                        if trigger[1] == "down":
                            return
                        if trigger[1] == "hold":  # the bytes wait for up(), then go
                            if not self._wait_to_move():
                                return
                            dst.sendall(data)
                        continue
                if not self._wait_to_move():
                    return
                dst.sendall(data)
        except OSError:
            return
        finally:
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
