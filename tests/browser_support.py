"""What the browser tests (``tests/test_browser.py``, marker ``browser``) need around them.

* **Chromium**: Debian's ``chromium`` (``TEST_CHROMIUM``, default ``/usr/bin/chromium``),
  driven by Playwright's Python package through ``executable_path``; Playwright's own browser
  downloads are never used. :func:`ensure_chromium` installs ``chromium`` and
  ``chromium-driver`` with apt-get when the binary is missing and the suite runs as root; the
  conftest calls it once, after collection, when a browser test is selected.
* **The shop**: :class:`ShopServer` serves the demo project (``manage.py runserver``) with
  ``tests.settings_browser``: its own SQLite file, the suite's Redis under a key prefix of its
  own (deleted afterwards), the ``sync`` transport.
* **Screenshots**: every admin page a test visits is saved, full page, under
  ``build/screenshots/`` (``TEST_SCREENSHOTS_DIR``), emptied at the start of each run.

Opt out with ``runtests.py --no-browser``, ``TEST_NO_BROWSER=1`` or ``pytest -m "not browser"``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import terminate

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
PACKAGES = ("chromium", "chromium-driver")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]
SCREENSHOTS = Path(os.environ.get("TEST_SCREENSHOTS_DIR", ROOT / "build" / "screenshots"))
OPT_OUT = "TEST_NO_BROWSER"

HOW_TO = (
    "Install it as root with `apt-get update && apt-get install -y chromium chromium-driver` "
    "(the test setup does this itself when it runs as root and apt-get is there), point "
    "TEST_CHROMIUM at another Chromium binary, or skip the browser tests: "
    "`runtests.py --no-browser`, TEST_NO_BROWSER=1, or `pytest -m 'not browser'`."
)


def opted_out() -> bool:
    return os.environ.get(OPT_OUT, "").strip().lower() not in ("", "0", "no", "false")


def chromium_problem() -> str | None:
    """None when Chromium is there, else what is wrong and what to do."""
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return None
    return f"Chromium is not installed at {CHROMIUM}. {HOW_TO}"


def ensure_chromium() -> str | None:
    """Install Chromium with apt-get when it is missing and we may; None when it is there.

    Returns the problem (for the browser tests to fail with) when it is still missing.
    """
    problem = chromium_problem()
    if problem is None:
        return None
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0 or CHROMIUM != "/usr/bin/chromium":
        return problem
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"\nbrowser tests: installing {' '.join(PACKAGES)} with apt-get", flush=True)
    for command in ([apt, "update"], [apt, "install", "-y", *PACKAGES]):
        code = subprocess.call(command, env=env)
        if code != 0:
            return f"`{' '.join(command)}` failed (exit {code}). {problem}"
    return chromium_problem()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ShopServer:
    """The demo shop in a ``runserver`` subprocess, on a free port, with its own data."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.key_prefix = f"cibrowser-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="tests.settings_browser",
            BROWSER_DB=str(workdir / "shop.sqlite3"),
            BROWSER_KEY_PREFIX=self.key_prefix,
            TEST_REDIS_URL=redis_url,
            PYTHONWARNINGS="error",
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.products: dict[str, int] = {}

    def manage(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)[:200]} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def shell(self, code: str) -> Any:
        """Run ``code`` in ``manage.py shell``; what it prints on a line ``=> <JSON>`` is
        returned (None without such a line)."""
        out = self.manage("shell", "-c", code)
        found = [line[3:] for line in out.splitlines() if line.startswith("=> ")]
        return json.loads(found[-1]) if found else None

    def set_up(self) -> None:
        """Migrate and seed (``manage.py demo --no-serve``, which also creates admin/admin),
        add a staff user without the app's permissions, and note the products' ids."""
        self.manage("demo", "--no-serve", "--verbosity", "0")
        self.products = self.shell(SET_UP)

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runserver",
                f"127.0.0.1:{self.port}",
                "--noreload",
                "--skip-checks",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/admin/login/", timeout=5) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the shop did not start serving:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return "(no server log)"

    def product_url(self, name: str) -> str:
        return f"{self.url}/products/{self.products[name]}/"


# A staff user who may look at the app's lists but holds neither invalidate_cache nor
# replay_deadletter; prints the products' ids.
SET_UP = """
import json
from django.contrib.auth.models import Permission, User
from testproject.shop.models import Product
clerk, _ = User.objects.get_or_create(username="clerk", defaults={"is_staff": True})
clerk.set_password("clerk-password")
clerk.save()
clerk.user_permissions.set(Permission.objects.filter(
    content_type__app_label__in=["cache_invalidation", "shop"], codename__startswith="view_"))
assert not clerk.has_perm("cache_invalidation.invalidate_cache")
assert not clerk.has_perm("cache_invalidation.replay_deadletter")
print("=>", json.dumps(dict(Product.objects.values_list("name", "pk"))))
"""
