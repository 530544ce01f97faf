"""Invalidating one tag with N members: how long Redis is blocked per call, and in total.

Starts a private redis-server (logging every command in SLOWLOG), fills one tag through the
real index layout, invalidates it with ``tagged_cache.invalidate_tags`` and reports the
longest and the total server time of the script calls, next to a baseline measured in the
same run: deleting all members in a single script call (what an unchunked design does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fill(raw: Any, prefix: str, tag: str, members: int) -> None:
    pipe = raw.pipeline(transaction=False)
    for i in range(members):
        key = f"{prefix}:1:item:{i}"
        pipe.set(key, b"x", px=600_000)
        pipe.sadd(f"{prefix}:1:ci:t:{tag}", key)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks bigtag")
    parser.add_argument("--members", type=int, default=100_000)
    args = parser.parse_args(argv)

    import redis

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django
    from django.conf import settings

    port = _free_port()
    workdir = tempfile.mkdtemp()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir,
         "--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000"],
        stdout=subprocess.DEVNULL,
    )
    try:
        raw = redis.Redis(port=port)
        for _ in range(100):
            try:
                raw.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        django.setup()
        settings.CACHES["bench"] = {"BACKEND": "django_redis.cache.RedisCache",
                                    "LOCATION": f"redis://127.0.0.1:{port}/0",
                                    "KEY_PREFIX": "bench"}
        from cache_invalidation import TaggedCache

        cache = TaggedCache("bench")

        # Baseline: every member deleted in one script call.
        _fill(raw, "bench", "base", args.members)
        raw.slowlog_reset()
        one_call = raw.register_script(
            "local m = redis.call('SMEMBERS', KEYS[1]) "
            "for s = 1, #m, 500 do redis.call('DEL', unpack(m, s, math.min(s + 499, #m))) end "
            "return #m")
        one_call(keys=["bench:1:ci:t:base"])
        baseline = max(e["duration"] for e in raw.slowlog_get(100000)
                       if e["command"].startswith(b"EVAL"))

        _fill(raw, "bench", "huge", args.members)
        raw.slowlog_reset()
        started = time.perf_counter()
        deleted = cache.invalidate_tags(["huge"])
        wall = time.perf_counter() - started
        entries = [e for e in raw.slowlog_get(100000) if e["command"].startswith(b"EVAL")]
        calls = [e["duration"] for e in entries]
        top = sorted(entries, key=lambda e: -e["duration"])[:3]
        for e in top:
            print(f"  {e['duration'] / 1000:.2f} ms: {e['command'][:70]!r}")
        print(f"members: {args.members}, deleted: {deleted}")
        print(f"baseline, one script call: {baseline / 1000:.1f} ms blocked")
        print(f"chunked: {len(calls)} script calls, longest {max(calls) / 1000:.2f} ms, "
              f"total server time {sum(calls) / 1000:.1f} ms, wall {wall * 1000:.0f} ms")
        print(f"longest block vs baseline: {max(calls) / baseline:.3f}")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
