"""``python -m benchmarks run --contender X [--workload Y ...] [--scale quick|full] [--json]``

Runs workloads for one contender in this process, with that contender's settings, against a
private redis-server and a PostgreSQL database cloned from the seeded template (both created
here and removed afterwards). Prints the results as JSON with ``--json``, or writes them to
``--out``. A contender whose library is not installed is reported as skipped (exit status 0).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from . import infra
from .contenders import NAMES
from .scale import SCALES

RESULTS = Path(__file__).resolve().parent / "results"
REQUIRES = {"cacheops": ("cacheops", "django-cacheops"),
            "cachalot": ("cachalot", "django-cachalot")}


def workload_names() -> list[str]:
    from .workloads import WORKLOADS

    return list(WORKLOADS)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks run")
    parser.add_argument("--contender", required=True, choices=NAMES)
    parser.add_argument("--workload", action="append", choices=[*workload_names(), "all"],
                        help="repeatable; default: all")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--template", help="an existing seeded database to clone (bench_*)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    selected = workload_names() if not args.workload or "all" in args.workload \
        else [w for w in workload_names() if w in args.workload]
    result = run(args.contender, selected, args.scale, args.template)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json or not args.out:
        print(text)
    return 0


def run(
    contender: str, selected: list[str], scale_name: str, template: str | None
) -> dict[str, Any]:
    scale = SCALES[scale_name]
    result: dict[str, Any] = {"contender": contender, "scale": scale.as_dict()}
    missing = _missing_library(contender)
    if missing:
        result["skipped"] = f"{missing} is not installed (pip install -e '.[bench]')"
        return result
    with ExitStack() as stack:
        if template is None:
            template = f"bench_tpl_{scale.name}_{os.getpid()}"
            seed(scale.name, template)
            stack.callback(infra.drop_database, template)
        name = f"bench_{os.getpid()}_{contender}"
        port = stack.enter_context(infra.redis_server())
        infra.create_database(name, template)
        stack.callback(infra.drop_database, name)
        env = {"BENCH_DB_NAME": name, "BENCH_REDIS_PORT": str(port),
               "DJANGO_SETTINGS_MODULE": f"benchmarks.settings.{contender}"}
        os.environ.update(env)
        if contender == "ours_celery":
            importlib.import_module("benchmarks.celery_app")
        import django

        django.setup()
        from django.db import connections

        stack.callback(connections.close_all)
        from .context import Context, worker_env
        from .workloads import WORKLOADS

        logdir = RESULTS / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        from . import contenders

        ctx = Context(contenders.get(contender), scale, port, worker_env(env), logdir)
        stack.callback(ctx.stop_worker)
        from django.conf import settings

        result["versions"] = versions(ctx)
        result["ttl"] = settings.TTL
        result["workloads"] = {}
        result["seconds"] = {}
        # Other work on the machine skews every figure: say how busy it was.
        result["loadavg"] = {"before": os.getloadavg()}
        for workload in selected:
            started = time.perf_counter()
            outcome = WORKLOADS[workload](ctx)
            if outcome is not None:
                result["workloads"][workload] = outcome
                result["seconds"][workload] = round(time.perf_counter() - started, 2)
            print(f"  {contender} {workload}: {time.perf_counter() - started:.1f}s",
                  file=sys.stderr, flush=True)
        result["loadavg"]["after"] = os.getloadavg()
        if ctx.outbox:
            from .outbox_relay import INTERVAL, LIMIT

            ctx.stop_worker()
            result["relay"] = {
                "interval": float(os.environ.get("BENCH_RELAY_INTERVAL", INTERVAL)),
                "limit": LIMIT, "cpu_seconds": round(ctx.worker_cpu, 2),
                "wall_seconds": round(ctx.worker_wall, 2),
            }
    return result


def seed(scale: str, database: str) -> None:
    subprocess.run([sys.executable, "-m", "benchmarks", "seed", "--scale", scale, "--db", database],
                   cwd=infra.ROOT, check=True, stdout=sys.stderr)


def _git_state() -> str:
    """The commit measured, and whether the app's sources differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=infra.ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "cache_invalidation"],
                               cwd=infra.ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes to cache_invalidation/" if dirty else "")


def _missing_library(contender: str) -> str | None:
    module, package = REQUIRES.get(contender, (None, None))
    if module is None:
        return None
    return None if importlib.util.find_spec(module) is not None else package


def versions(ctx: Any) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from django.db import connection

    found = {"python": sys.version.split()[0]}
    for package in ("Django", "django-redis", "redis", "celery", "kombu", "psycopg",
                    "django-cacheops", "django-cachalot", "django-cache-invalidation"):
        with suppress(PackageNotFoundError):
            found[package] = version(package)
    found["redis-server"] = str(ctx.redis.info("server")["redis_version"])
    found["git"] = _git_state()
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        found["postgresql"] = cursor.fetchone()[0]
    return found
