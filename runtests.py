#!/usr/bin/env python3
"""Run the whole test suite: once against SQLite, once against PostgreSQL.

Usage: python runtests.py [--db sqlite|postgresql|all] [--no-browser] [pytest arguments...]

Needs Redis (TEST_REDIS_URL, default redis://127.0.0.1:6379/11 for the cache and
TEST_BROKER_URL, default redis://127.0.0.1:6379/12 for Celery) and, for the PostgreSQL run,
PostgreSQL (TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test; the suite
creates and drops its own database, test_cache_invalidation). Exits non-zero if any run fails
or runs no test.

The browser tests (marker ``browser``, tests/test_browser.py: the admin in headless Chromium)
run once, in the SQLite pass; the PostgreSQL pass leaves them out (they serve the demo shop
from an SQLite file of their own whatever the pass). They install Debian's ``chromium`` and
``chromium-driver`` with apt-get when /usr/bin/chromium is missing and the suite runs as root,
and fail saying how to install it otherwise. ``--no-browser`` (or ``TEST_NO_BROWSER=1``)
leaves them out of every pass.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 3
        ):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument(
        "--no-browser",
        action="store_true",
        help="leave out the browser tests (marker browser); the same as TEST_NO_BROWSER=1",
    )
    options, pytest_args = parser.parse_known_args()
    runs = ["sqlite", "postgresql"] if options.db == "all" else [options.db]

    if not reachable(REDIS_URL, 6379):
        print(f"runtests: Redis is not answering at {REDIS_URL}; start it first.", file=sys.stderr)
        return 3
    if "postgresql" in runs and not reachable(POSTGRES_URL, 5432):
        print(
            f"runtests: PostgreSQL is not answering at {POSTGRES_URL}; start it first, or "
            "run with --db sqlite.",
            file=sys.stderr,
        )
        return 3

    failed = []
    for name in runs:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        if name == "postgresql":
            env["DATABASE_URL"] = POSTGRES_URL
            env["TEST_NO_BROWSER"] = "1"  # once per invocation: the SQLite pass runs them
        if options.no_browser:
            env["TEST_NO_BROWSER"] = "1"
        print(f"\n=== test suite on {name} ===", flush=True)
        code = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], env=env)
        if code != 0:  # 5 means no test ran: that is a failure too
            failed.append(f"{name} (pytest exit {code})")
    if failed:
        print("runtests: FAILED on " + ", ".join(failed), file=sys.stderr)
        return 1
    print("runtests: all runs passed (" + ", ".join(runs) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
