"""The other processes of ``tests/test_local_processes.py`` (settings: ``tests.settings_local``).

- :func:`served_by`, a middleware of the served shop: ``X-Served-By`` (the pid) and
  ``X-Local-Mark``, the number of the last announcement this process's local cache had
  applied when the request began (``bypass`` while its subscription is not live). A page
  served from an old local copy is a bug only when that number already covers the write.
- ``python -m tests.local_support writer``: saves products through the ORM, one JSON command a
  line on stdin, one JSON answer a line on stdout, sent once the write committed and its
  invalidation was applied (the ``sync`` transport) with the invalidation sequence then.
- ``python -m tests.local_support fork``: uses the local cache, forks, and has parent and child
  check each other's invalidations; prints one JSON report.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse


def _local() -> Any:
    from cache_invalidation.conf import get_config
    from cache_invalidation.localcache import local_for

    return local_for(get_config()["CACHE_ALIAS"])


def served_by(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., Any]:
    from cache_invalidation.localcache import options

    def middleware(request: HttpRequest) -> HttpResponse:
        mark = _local().mark() if options() else None  # before the view reads anything
        response = get_response(request)
        response["X-Served-By"] = str(os.getpid())
        response["X-Local-Mark"] = "bypass" if mark is None else str(mark.seq)
        return response

    return middleware


# -- the writer ----------------------------------------------------------------------------------
def _sequence() -> int:
    return int(_local().backend.sequence()[0])


def _write(command: dict[str, Any]) -> dict[str, Any]:
    from django.core.cache import caches

    from testproject.shop.models import Category, Product

    op = command["op"]
    if op == "seed":
        category = Category.objects.create(name="Local", slug=f"local-{os.getpid()}")
        pks = [
            Product.objects.create(name=f"p{i}", price=Decimal(command["price"]), category=category).pk
            for i in range(int(command.get("products", 1)))
        ]
        return {"pks": pks}
    if op == "price":
        product = Product.objects.get(pk=command["pk"])
        product.price = Decimal(command["price"])
        product.save()  # autocommit: committed, and invalidated inline, when save() returns
        return {"seq": _sequence()}
    if op == "ping":  # wait until the cache answers again (after a restart)
        deadline = time.monotonic() + 30
        while True:
            try:
                caches["default"].get("ping")
                return {"seq": _sequence()}
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    raise ValueError(f"unknown command {op!r}")


def writer() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = _write(json.loads(line))
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


# -- fork after first use ------------------------------------------------------------------------
KEY, TAG = "fork:shared", "fork:shared"
CHILD_KEY, CHILD_TAG = "fork:child", "fork:child"
PARENT_KEY, PARENT_TAG = "fork:parent", "fork:parent"


def _read(key: str, tag: str, computed: str) -> dict[str, Any]:
    from cache_invalidation import tagged_cache
    from cache_invalidation.localcache import served_locally

    value = tagged_cache.get_or_set(key, lambda: computed, tags=[tag], local=True)
    return {"value": value, "local": served_locally()}


def _gone(key: str, timeout: float = 10.0) -> bool:
    """Whether this process's local copy of ``key`` disappears within ``timeout``."""
    local = _local()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if key not in local._entries:
            return True
        time.sleep(0.001)
    return False


def _send(fd: int, message: Any) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _receive(stream: Any) -> Any:
    line = stream.readline()
    if not line:
        raise EOFError("the other process went away")
    return json.loads(line)


def fork() -> int:
    from cache_invalidation import tagged_cache

    report: dict[str, Any] = {}
    local = _local()
    report["parent_live"] = local.wait_live()
    report["parent_before"] = [_read(KEY, TAG, "parent-1") for _ in range(2)]
    report["parent_entries_at_fork"] = len(local)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    with warnings.catch_warnings():
        # Forking a process whose subscriber thread runs is the case under test (gunicorn
        # --preload, Celery's prefork pool, multiprocessing): Python 3.12+ warns about it.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(to_parent_r)
        code = 0
        try:
            _send(to_parent_w, _child(os.fdopen(to_child_r), to_parent_w))
        except BaseException as exc:
            _send(to_parent_w, {"error": f"{type(exc).__name__}: {exc}"})
            code = 1
        os._exit(code)
    os.close(to_child_r)
    os.close(to_parent_w)
    from_child = os.fdopen(to_parent_r)
    # The child now holds a copy of this process's entries ("parent-1"). Make it stale.
    tagged_cache.invalidate_tags([TAG])
    report["parent_after_invalidating"] = _read(KEY, TAG, "parent-2")
    _send(to_child_w, "stale")
    assert _receive(from_child) == "live", "child"
    tagged_cache.invalidate_tags([CHILD_TAG])  # from another process, for the child
    _send(to_child_w, "invalidated")
    report["parent_fill"] = [_read(PARENT_KEY, PARENT_TAG, "parent-3") for _ in range(2)]
    _send(to_child_w, "filled")
    assert _receive(from_child) == "invalidated", "child"  # the child invalidated PARENT_TAG
    report["parent_saw_child_invalidation"] = _gone(PARENT_KEY)
    report["parent_after"] = _read(PARENT_KEY, PARENT_TAG, "parent-4")
    report["child"] = _receive(from_child)
    _, status = os.waitpid(pid, 0)
    report["child_exit"] = os.waitstatus_to_exitcode(status)
    report["parent_still_live"] = local.live and local._subscriber.running
    print(json.dumps(report), flush=True)
    return 0


def _child(commands: Any, out: int) -> dict[str, Any]:
    from cache_invalidation import tagged_cache

    report: dict[str, Any] = {}
    assert _receive(commands) == "stale"
    local = _local()
    report["inherited_entries"] = len(local)
    report["live_at_start"] = local.live
    report["first_read"] = _read(KEY, TAG, "child-1")  # must not be the parent's "parent-1"
    report["live"] = local.wait_live()
    report["own_subscriber"] = local._subscriber is not None and local._subscriber.running
    report["reads"] = [_read(CHILD_KEY, CHILD_TAG, "child-2") for _ in range(2)]
    _send(out, "live")
    assert _receive(commands) == "invalidated"
    report["saw_parent_invalidation"] = _gone(CHILD_KEY)
    report["after"] = _read(CHILD_KEY, CHILD_TAG, "child-3")
    assert _receive(commands) == "filled"
    tagged_cache.invalidate_tags([PARENT_TAG])
    _send(out, "invalidated")
    return report


def main(argv: list[str]) -> int:
    import django

    django.setup()
    return {"writer": writer, "fork": fork}[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
