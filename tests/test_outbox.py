"""TRANSPORT = "outbox": events are rows committed with the change; nothing is lost."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from cache_invalidation import invalidate, no_invalidation, tagged_cache
from cache_invalidation.models import DeadLetter, OutboxEvent
from testproject.shop.models import Category, Product, Review

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def outbox_settings(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox", "OUTBOX_DELIVER_ON_COMMIT": False}
    return settings


@pytest.fixture
def product():
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        return Product.objects.create(name="Arc", price=Decimal("1"), category=category)


def relay(*args):
    out = io.StringIO()
    call_command("relay_outbox", *args, stdout=out)
    return out.getvalue()


def test_rows_are_written_in_the_transaction_and_relayed_after(outbox_settings, product):
    tagged_cache.set("page", "cached", tags=[f"product:{product.pk}"])
    with transaction.atomic():
        product.name = "Arc 2"
        product.save()
        Review.objects.create(product=product, rating=5, text="ok")
        assert OutboxEvent.objects.count() == 2  # visible inside the transaction already
    rows = list(OutboxEvent.objects.all())
    assert len({row.batch for row in rows}) == 1  # one transaction, one batch
    assert tagged_cache.get("page") == "cached"  # not delivered yet (DELIVER_ON_COMMIT off)
    assert json.loads(relay("--json")) == {
        "batches": 1, "events": 2, "failed": 0, "dead_lettered": 0,
        "rows": 0, "oldest_age": None,
    }
    assert tagged_cache.get("page") is None
    assert not OutboxEvent.objects.exists()


@pytest.fixture
def outbox_refused():
    """The database refuses outbox rows (a trigger): the write of an event fails for real."""
    from django.db import connection

    table = OutboxEvent._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION ci_refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'outbox refused'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(f"CREATE TRIGGER ci_refuse BEFORE INSERT ON {table} "
                           "FOR EACH ROW EXECUTE FUNCTION ci_refuse()")
        else:
            cursor.execute(f"CREATE TRIGGER ci_refuse BEFORE INSERT ON {table} "
                           "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END")
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP TRIGGER ci_refuse ON {table}")
            cursor.execute("DROP FUNCTION ci_refuse()")
        else:
            cursor.execute("DROP TRIGGER ci_refuse")


def test_an_autocommit_save_commits_with_its_outbox_row_or_not_at_all(
    outbox_settings, product, outbox_refused
):
    """Without a transaction, Django commits a save's UPDATE before post_save: the outbox row
    would follow in a second transaction, and a failure (or a crash) between the two would
    lose the event. The app makes the save one transaction when the outbox is on."""
    from django.db import DatabaseError

    with pytest.raises(DatabaseError, match="outbox refused"):
        product.name = "Arc 2"
        product.save()
    assert Product.objects.get(pk=product.pk).name == "Arc"  # the change went with the row
    assert not OutboxEvent.objects.exists()


def test_rollback_and_savepoint_rollback_leave_no_rows(outbox_settings, product):
    with pytest.raises(RuntimeError), transaction.atomic():
        product.save()
        raise RuntimeError
    assert not OutboxEvent.objects.exists()
    with transaction.atomic():
        try:
            with transaction.atomic():
                product.save()
                raise RuntimeError
        except RuntimeError:
            pass
        invalidate(tags=["kept"])
    [row] = OutboxEvent.objects.all()
    assert row.event["tags"] == ["kept"]


def test_delivery_on_commit_is_immediate_by_default(settings, product):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox"}
    tagged_cache.set("page", "cached", tags=[f"product:{product.pk}"])
    product.save()
    assert tagged_cache.get("page") is None
    assert not OutboxEvent.objects.exists()


def test_failed_delivery_stays_then_dead_letters_after_max_retries(outbox_settings, settings,
                                                                   private_redis):
    settings.CACHES = {**settings.CACHES, "private": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": private_redis.url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.3}}}
    settings.CACHE_INVALIDATION = {**settings.CACHE_INVALIDATION, "CACHE_ALIAS": "private",
                                   "MAX_RETRIES": 1, "RETRY_BACKOFF": 0, "RETRY_JITTER": False}
    private_redis.stop()
    invalidate(tags=["x"])
    with pytest.raises(CommandError) as info:
        call_command("relay_outbox", stdout=io.StringIO())
    assert info.value.returncode == 1
    assert str(info.value).startswith("Some batches failed and stay in the outbox: ")
    row = OutboxEvent.objects.get()
    assert row.attempts == 1 and "ConnectionError" in row.last_error
    with pytest.raises(CommandError):  # the second failure passes MAX_RETRIES
        call_command("relay_outbox", stdout=io.StringIO())
    assert not OutboxEvent.objects.exists()
    [letter] = DeadLetter.objects.all()
    assert (letter.reason, letter.attempts, letter.tags) == ("retries_exhausted", 2, ["x"])


def test_process_killed_right_after_commit_is_delivered_by_the_relay(tmp_path, redis_client):
    """The web process dies between commit and publish: the relay delivers the event later."""
    prefix = f"citest-outbox-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_process",
           "PROCESS_DB": str(tmp_path / "db.sqlite3"), "PROCESS_KEY_PREFIX": prefix}
    script = textwrap.dedent("""
        import os, django
        django.setup()
        from django.core.management import call_command
        from django.db import transaction
        from cache_invalidation import no_invalidation, tagged_cache
        from testproject.shop.models import Category, Product
        call_command("migrate", verbosity=0)
        with no_invalidation():
            c = Category.objects.create(name="Lamps", slug="lamps")
            p = Product.objects.create(name="Arc", price=1, category=c)
        tagged_cache.set("page", "cached", tags=[f"product:{p.pk}"])
        with transaction.atomic():
            transaction.on_commit(lambda: os._exit(0))  # dies right after commit
            p.name = "Arc 2"
            p.save()
        raise SystemExit("not reached")
    """)
    try:
        died = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert died.returncode == 0, died.stderr
        cache_key = f"{prefix}:1:page"
        assert redis_client.exists(cache_key)  # nothing was invalidated
        relayed = subprocess.run(
            [sys.executable, "manage.py", "relay_outbox", "--json"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=120)
        assert relayed.returncode == 0, relayed.stderr
        assert json.loads(relayed.stdout)["events"] == 1
        assert not redis_client.exists(cache_key)
    finally:
        stale = list(redis_client.scan_iter(match=f"{prefix}*"))
        if stale:
            redis_client.delete(*stale)


def test_dry_run_reports_the_backlog(outbox_settings):
    invalidate(tags=["a"])
    invalidate(tags=["b"])
    assert relay("--dry-run").strip() == "Would deliver up to 500 of 2 pending row(s)."
    assert OutboxEvent.objects.count() == 2
