"""README's first command: `manage.py demo` sets everything up and serves the shop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONWARNINGS"] = "error"
    return env


def test_demo_sets_up_without_any_service(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-serve"],
        cwd=ROOT, env=demo_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Superuser: admin / admin" in result.stdout
    assert "invalidation transport: sync" in result.stdout
    assert "LocMemCache" in result.stdout
    again = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-serve"],
        cwd=ROOT, env=demo_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert "already up to date" in again.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fetch(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, dict(response.headers), response.read().decode()


def test_demo_serves_the_shop(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--addrport", f"127.0.0.1:{port}"],
        cwd=ROOT, env=demo_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                status, _, home = _fetch(base + "/")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the demo did not start serving in 90 s"
                time.sleep(0.3)
        assert status == 200
        product_url = base + re.search(r'href="(/products/\d+/)"', home).group(1)
        assert _fetch(product_url)[1]["X-Cache"] == "miss"
        assert _fetch(product_url)[1]["X-Cache"] == "hit"
        assert _fetch(base + "/admin/login/")[0] == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)


def test_demo_with_redis_runs_a_worker_and_invalidates_across_processes(tmp_path):
    """REDIS_URL set: django-redis cache, Celery transport, a worker inside the demo process,
    and the local cache on: a page read again is served from the server's memory
    (``X-Cache: hit-local``, once its subscription is live). A price changed from another
    process reaches the page through the broker and worker, local copy included."""
    import redis

    url = os.environ.get("TEST_DEMO_REDIS_URL", "redis://127.0.0.1:6379/13")
    env = demo_env(tmp_path)
    env["REDIS_URL"] = url
    port = _free_port()
    client = redis.Redis.from_url(url)
    server = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--addrport", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                home = _fetch(base + "/")[2]
                break
            except OSError:
                assert server.poll() is None
                assert time.monotonic() < deadline, "the demo did not start serving in 90 s"
                time.sleep(0.3)
        pk = re.search(r'href="/products/(\d+)/"', home).group(1)
        page = f"{base}/products/{pk}/"
        assert _fetch(page)[1]["X-Cache"] == "miss"
        # Redis serves the page until the server's subscription is confirmed, then its copy.
        seen = [_fetch(page)[1]["X-Cache"] for _ in range(3)]
        deadline = time.monotonic() + 30
        while seen[-1] != "hit-local":
            assert set(seen) <= {"hit", "hit-local"}, seen
            assert time.monotonic() < deadline, f"never served locally: {seen[-20:]}"
            time.sleep(0.1)
            seen.append(_fetch(page)[1]["X-Cache"])
        changed = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from testproject.shop.models import Product\n"
             f"p = Product.objects.get(pk={pk}); p.price = 1234; p.save()"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        assert changed.returncode == 0, changed.stderr
        deadline = time.monotonic() + 30
        while "1234" not in _fetch(page)[2]:
            assert time.monotonic() < deadline, "the worker never invalidated the page"
            time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
        stale = list(client.scan_iter(match="shop:*")) + list(client.scan_iter(match="*celery*"))
        if stale:
            client.delete(*stale)
    assert "Started a Celery worker in this process" in output
