"""``manage.py demo``: migrate, seed the shop, create the admin user and serve the site.

With ``REDIS_URL`` set the transport is Celery, and a worker runs inside this process (in a
thread) for as long as the server does, so one command shows the whole flow; the local cache
(``LOCAL_CACHE``) is on too, so a page read twice is served from this process's memory.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection

from cache_invalidation import signals
from cache_invalidation.conf import get_config

from ... import seed
from ...models import Category, Product, Profile

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"


class Command(BaseCommand):
    help = (
        "Migrate, seed demo data, create the superuser admin/admin and serve the shop "
        "(with an in-process Celery worker when the transport is Celery, and local copies of "
        "cached parts when REDIS_URL is set)."
    )

    SEEDED = "Demo data: {summary}."
    SUPERUSER = "Superuser: {username} / {password}"
    WORKER = "Started a Celery worker in this process (pool=solo, broker {broker})."
    LOCAL_CACHE = (
        "The LocMem cache lives inside the server process: changes made elsewhere "
        "(manage.py shell, another process) cannot reach it. Set REDIS_URL to share the cache."
    )
    APPLIED = "invalidated tags {tags} keys {keys} ({deleted} entries deleted)"

    verbosity = 1

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--addrport",
            default="127.0.0.1:8000",
            help="Address and port to serve on (default: 127.0.0.1:8000).",
        )
        parser.add_argument(
            "--no-serve",
            action="store_true",
            help="Migrate, seed and create the superuser, then exit without serving.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = options["verbosity"]
        call_command(
            "migrate", interactive=False, verbosity=max(self.verbosity - 1, 0), stdout=self.stdout
        )
        stats = seed.seed()
        summary = ", ".join(f"{what}: {n}" for what, n in sorted(stats.items()))
        self.say(self.SEEDED.format(summary=summary or "already up to date"))
        self.ensure_superuser()

        transport = get_config()["TRANSPORT"]
        cache = settings.CACHES[get_config()["CACHE_ALIAS"]]["BACKEND"]
        self.say(f"Database: {connection.vendor} {connection.settings_dict['NAME']}")
        self.say(f"Cache: {cache}; invalidation transport: {transport}")
        self.say(self.SUPERUSER.format(username=ADMIN_USERNAME, password=ADMIN_PASSWORD))
        self.show_urls(options["addrport"])
        if options["no_serve"]:
            return

        signals.invalidation_applied.connect(
            self.on_applied, weak=False, dispatch_uid="testproject.demo.applied"
        )
        if threading.current_thread() is threading.main_thread():
            # Make `kill <pid>` stop like CONTROL-C, so the worker thread is shut down too.
            signal.signal(signal.SIGTERM, _interrupt)
        with self.worker(transport):
            call_command("runserver", options["addrport"], use_reloader=False, skip_checks=True)

    def say(self, message: str, style: Callable[[str], str] | None = None) -> None:
        if self.verbosity >= 1:
            self.stdout.write((style or self.style.SUCCESS)(message))

    def ensure_superuser(self) -> None:
        User = get_user_model()
        user = User._default_manager.filter(username=ADMIN_USERNAME).first()
        if user is None:
            user = User(username=ADMIN_USERNAME, email="admin@example.com")
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(ADMIN_PASSWORD)
        user.save()
        Profile.objects.get_or_create(user=user, defaults={"display_name": "Administrator"})

    def show_urls(self, addrport: str) -> None:
        host, _, port = addrport.rpartition(":")
        if host in ("", "0", "0.0.0.0"):
            host = "127.0.0.1"
        base = f"http://{host}:{port}"
        category = Category.objects.first()
        product = Product.objects.first()
        self.say(f"Shop:     {base}/")
        self.say(f"Admin:    {base}/admin/  (log in as {ADMIN_USERNAME} / {ADMIN_PASSWORD})")
        if category is not None:
            self.say(f"Category: {base}{category.get_absolute_url()}")
        if product is not None:
            self.say(f"Product:  {base}{product.get_absolute_url()}")
        self.say(
            "Each page sends X-Cache: hit-local|hit|miss (hit-local: this process's own copy, "
            "with REDIS_URL set). Change a price in the admin and reload the product page: it "
            "is a miss again."
        )
        if "LocMemCache" in settings.CACHES[get_config()["CACHE_ALIAS"]]["BACKEND"]:
            self.say(self.LOCAL_CACHE, self.style.WARNING)

    @contextlib.contextmanager
    def worker(self, transport: str) -> Iterator[None]:
        if transport != "celery":
            yield
            return
        from celery.contrib.testing.worker import start_worker
        from kombu.utils.url import maybe_sanitize_url

        from testproject.celery import app

        with start_worker(app, pool="solo", loglevel="INFO", perform_ping_check=False):
            self.say(self.WORKER.format(broker=maybe_sanitize_url(app.conf.broker_url)))
            yield

    def on_applied(self, sender: Any, events: Any, deleted: int, **kwargs: Any) -> None:
        tags = sorted({tag for event in events for tag in event.tags})
        keys = sorted({key for event in events for key in event.keys})
        self.say(self.APPLIED.format(tags=tags, keys=keys, deleted=deleted))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
