"""Change data capture against a real PostgreSQL 15 with ``wal_level = logical``.

The shared server runs ``wal_level = replica`` and stays that way: the session fixture
``cluster`` runs ``initdb`` into a temporary directory, starts a private server on a free
loopback port (as the ``postgres`` OS user when the suite runs as root: initdb and postgres
refuse root), and removes it afterwards. Django runs on it in child processes
(``tests/settings_cdc.py``) sharing this process's Redis key prefix, so an entry this process
stores is the one the child's ``consume_changes`` invalidates. Skipped, with the reason, where
the PostgreSQL 15 server binaries are missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from cache_invalidation import tagged_cache
from tests.conftest import _free_port, wait_for

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
ROOT = Path(__file__).resolve().parent.parent
SLOT = "ci_changes"

pytestmark = pytest.mark.skipif(
    not (BIN / "initdb").exists() or not (BIN / "postgres").exists(),
    reason=f"PostgreSQL server binaries not found in {BIN} (set PG_BIN): the change data "
    "capture tests start a private cluster with wal_level=logical",
)


class Cluster:
    """A private PostgreSQL server of the tests' own."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ci-cdc-"))
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/cdc"

    @property
    def admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=120, cwd=self.dir
        )
        if done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self.run(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
            "-o", f"-c wal_level=logical -c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.dir} -c fsync=off -c max_wal_senders=4",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self.run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []


def child_env(**more: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_cdc",
        "CDC_DATABASE_URL": CLUSTER_URL[0],
        "PROCESS_KEY_PREFIX": settings.KEY_PREFIX,
        **more,
    }


CLUSTER_URL: list[str] = []


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=child_env(**env),
        capture_output=True, text=True, timeout=120,
    )


def consume_once() -> dict[str, Any]:
    done = manage("consume_changes", "--once", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    try:
        server.run(str(BIN / "initdb"), "-D", str(server.data), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8")
        server.start()
        import psycopg

        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE cdc")
        CLUSTER_URL[:] = [server.url]
        for args in (("migrate", "-v0"), ("consume_changes", "--setup")):
            done = manage(*args)
            assert done.returncode == 0, done.stderr
        yield server
    finally:
        with contextlib.suppress(BaseException):  # it may not have started
            server.stop("immediate")
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def pg(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with the slot confirmed up to now and the shop's rows removed afterwards."""
    slot = cluster.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [SLOT])
    if not slot:
        assert manage("consume_changes", "--setup").returncode == 0
    cluster.sql(
        "SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", [SLOT]
    )
    yield cluster
    cluster.sql("TRUNCATE shop_review, shop_product_tags, shop_product, shop_category CASCADE")


def seed(pg: Cluster) -> None:
    pg.sql("INSERT INTO shop_category (id, name, slug) VALUES (3, 'Lamps', 'lamps'), "
           "(4, 'Desks', 'desks')")
    pg.sql("INSERT INTO shop_product (id, name, price, category_id, description) "
           "VALUES (5, 'Arc', 12.50, 3, '')")
    pg.sql("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", [SLOT])


def cache_pages() -> None:
    tagged_cache.set("product-page", "cached", tags=["product:5"])
    tagged_cache.set("old-category", "cached", tags=["category:3:products"])
    tagged_cache.set("new-category", "cached", tags=["category:4:products"])
    tagged_cache.set("pricing", "cached", tags=["pricing:4"])
    tagged_cache.set("other", "cached", tags=["product:6"])


def test_raw_sql_from_a_psycopg_connection_is_invalidated_after_consume(pg):
    seed(pg)
    cache_pages()
    pg.sql("UPDATE shop_product SET category_id = 4, price = 13 WHERE id = 5")
    assert tagged_cache.get("product-page") == "cached"  # no ORM saw it
    result = consume_once()
    assert (result["transactions"], result["events"]) == (1, 1)
    for key in ("product-page", "old-category", "new-category", "pricing"):
        assert tagged_cache.get(key) is None, key
    assert tagged_cache.get("other") == "cached"
    # Confirmed: the next round finds nothing.
    assert consume_once()["transactions"] == 0


def test_psql_in_another_process_and_truncate(pg):
    seed(pg)
    tagged_cache.set("review-list", "cached", tags=["shop.Review:*"])
    tagged_cache.set("product-page", "cached", tags=["product:5"])
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    done = subprocess.run(
        [psql, pg.url, "-v", "ON_ERROR_STOP=1", "-qc",
         "INSERT INTO shop_review (product_id, rating, text) VALUES (5, 4, 'fine')"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert consume_once()["events"] == 1
    assert tagged_cache.get("product-page") is None  # Review's "product:{product_id}"
    assert tagged_cache.get("review-list") is None
    tagged_cache.set("review-list", "cached", tags=["shop.Review:*"])
    tagged_cache.set("review-7", "cached", tags=["review:7"])  # declared tag, via the coarse tag
    pg.sql("TRUNCATE shop_review")
    assert consume_once()["events"] == 1
    assert tagged_cache.get("review-list") is None
    assert tagged_cache.get("review-7") is None


def test_tags_are_those_of_the_orm_path(pg):
    """A save through the ORM (recorded) and the same change back as raw SQL (decoded) yield
    the same tags and keys: values are converted as the ORM holds them (ints, Decimals)."""
    seed(pg)
    script = textwrap.dedent("""
        import json, django
        django.setup()
        from decimal import Decimal
        from django.db import connection
        from cache_invalidation import signals, consumer, replication
        from testproject.shop.models import Product
        seen = []
        signals.invalidation_published.connect(lambda events, **kw: seen.extend(events), weak=False)
        p = Product.objects.get(pk=5)
        p.category_id, p.price = 4, Decimal("13.00")
        p.save()
        [orm] = seen
        seen.clear()
        slot = "ci_changes"
        replication.advance(connection, slot, replication.flush_lsn(connection))
        with connection.cursor() as c:
            c.execute("UPDATE shop_product SET category_id = 3, price = 12.5 WHERE id = 5")
        consumer.consume_round(connection, "default", slot, slot, 1000)
        [cdc] = seen
        print(json.dumps({"orm": orm.to_dict(), "cdc": cdc.to_dict()}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    orm, cdc = found["orm"], found["cdc"]
    assert sorted(cdc["tags"]) == sorted(orm["tags"])
    assert cdc["keys"] == orm["keys"] == ["product:5:detail"]
    assert (cdc["type"], cdc["entity_id"]) == (orm["type"], orm["entity_id"]) == (
        "shop.Product.updated", "5")
    assert sorted(cdc["changed_fields"]) == sorted(orm["changed_fields"]) == ["category", "price"]
    assert "shop.Product:category_id=4" in cdc["tags"] and "pricing:4" in cdc["tags"]


def test_marked_orm_transactions_are_skipped_raw_sql_in_them_is_not(pg):
    seed(pg)
    script = textwrap.dedent("""
        import django
        django.setup()
        from django.db import connection, transaction
        from testproject.shop.models import Category, Product
        with transaction.atomic():
            Product.objects.filter(pk=5).update(name="Arc 2")   # ORM: invalidated at commit
            with connection.cursor() as c:                      # raw: seen by the consumer only
                c.execute("UPDATE shop_category SET name = 'Big desks' WHERE id = 4")
        with transaction.atomic():
            p = Product.objects.get(pk=5)
            p.name = "Arc 3"
            p.save()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          env=child_env(CDC_MARK="1"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    tagged_cache.set("product-page", "cached", tags=["product:5"])
    tagged_cache.set("category-4", "cached", tags=["category:4"])
    result = consume_once()
    assert (result["transactions"], result["events"], result["skipped"]) == (2, 1, 1)
    assert tagged_cache.get("product-page") == "cached"  # the ORM path did it, at commit
    assert tagged_cache.get("category-4") is None


def test_loaddata_without_marker_is_invalidated_by_the_consumer(pg, tmp_path):
    fixture = tmp_path / "shop.json"
    fixture.write_text(json.dumps([
        {"model": "shop.category", "pk": 8, "fields": {"name": "Rugs", "slug": "rugs"}},
    ]))
    tagged_cache.set("category-8", "cached", tags=["category:8"])
    done = manage("loaddata", str(fixture))
    assert done.returncode == 0, done.stderr
    tagged_cache.set("category-8", "cached", tags=["category:8"])  # after the ORM's own event
    assert consume_once()["events"] == 1
    assert tagged_cache.get("category-8") is None
    # With the marker, the same load is left to the ORM path (fixture rows are saved raw).
    fixture.write_text(json.dumps([
        {"model": "shop.category", "pk": 8, "fields": {"name": "Rugs 2", "slug": "rugs"}},
    ]))
    done = manage("loaddata", str(fixture), CDC_MARK="1")
    assert done.returncode == 0, done.stderr
    tagged_cache.set("category-8", "cached", tags=["category:8"])
    result = consume_once()
    assert (result["transactions"], result["events"], result["skipped"]) == (1, 0, 1)
    assert tagged_cache.get("category-8") == "cached"


def test_setup_dry_run_prints_only_what_is_missing(pg):
    done = manage("consume_changes", "--setup", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Would run 0 statement(s):"
    pg.sql("ALTER TABLE shop_tag REPLICA IDENTITY DEFAULT")
    try:
        done = manage("consume_changes", "--setup", "--dry-run")
        assert done.stdout.splitlines() == [
            "Would run 1 statement(s):",
            'ALTER TABLE "shop_tag" REPLICA IDENTITY FULL;',
        ]
        assert pg.sql("SELECT relreplident FROM pg_class WHERE relname = 'shop_tag'") == [("d",)]
    finally:
        pg.sql("ALTER TABLE shop_tag REPLICA IDENTITY FULL")


def test_missing_slot_exits_1_saying_what_to_do(pg):
    pg.sql("SELECT pg_drop_replication_slot(%s)", [SLOT])
    done = manage("consume_changes", "--once")
    assert done.returncode == 1
    assert "The replication slot 'ci_changes' does not exist on database 'default'" in (
        done.stderr
    )


def test_consumer_killed_mid_way_loses_nothing(pg, tmp_path):
    """SIGKILL the looping consumer while it works through 200 transactions, restart it: every
    product's page is invalidated."""
    pg.sql("INSERT INTO shop_category (id, name, slug) VALUES (3, 'Lamps', 'lamps')")
    pg.sql("INSERT INTO shop_product (id, name, price, category_id, description) "
           "SELECT g, 'p' || g, 1, 3, '' FROM generate_series(1, 200) g")
    pg.sql("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", [SLOT])
    for pk in range(1, 201):
        tagged_cache.set(f"page-{pk}", "cached", tags=[f"product:{pk}"])
    for pk in range(1, 201):
        pg.sql("UPDATE shop_product SET name = 'q' WHERE id = %s", [pk])

    log = tmp_path / "consumer.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "manage.py", "consume_changes", "--interval", "0.05"],
                cwd=ROOT, env=child_env(CI_TEST_CHANGES_BATCH="1"),
                stdout=subprocess.DEVNULL, stderr=out,
            )

    first = start()
    try:
        # Killed once some, not all, pages are gone.
        assert wait_for(lambda: tagged_cache.get("page-30") is None, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    gone = sum(tagged_cache.get(f"page-{pk}") is None for pk in range(1, 201))
    assert gone < 200, "the consumer finished before it was killed: nothing was tested"
    second = start()
    try:
        assert wait_for(
            lambda: all(tagged_cache.get(f"page-{pk}") is None for pk in range(1, 201)),
            timeout=60,
        ), log.read_text()
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert second.returncode == 0, log.read_text()
    print(f"killed after {gone} of 200 pages were invalidated")


def test_killed_after_publishing_before_confirming_republishes_on_restart(pg):
    """The exact window at-least-once is about: the consumer dies after a batch was published
    and before the slot moved. The slot has not moved; the next run publishes it again."""
    seed(pg)
    before = pg.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = %s", [SLOT])
    pg.sql("UPDATE shop_product SET name = 'Arc 2' WHERE id = 5")
    pg.sql("UPDATE shop_category SET name = 'Big desks' WHERE id = 4")
    script = textwrap.dedent("""
        import os, django
        django.setup()
        from django.core.management import call_command
        from cache_invalidation import batching
        published = batching.publish_now
        def publish_then_die(events):
            published(events)
            os._exit(9)   # killed between the first publish and the advance
        batching.publish_now = publish_then_die
        call_command("consume_changes", "--once")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    after = pg.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                   "WHERE slot_name = %s", [SLOT])
    assert after == before
    tagged_cache.set("product-page", "cached", tags=["product:5"])
    tagged_cache.set("category-4", "cached", tags=["category:4"])
    assert consume_once()["transactions"] == 2
    assert tagged_cache.get("product-page") is None
    assert tagged_cache.get("category-4") is None


def test_status_shows_slot_lag_and_heartbeat(pg):
    consume_once()
    done = manage("cache_invalidation_status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)["changes"]
    assert found["used"] is True and found["slot_exists"] is True
    assert found["wal_level"] == "logical" and found["error"] is None
    assert isinstance(found["lag_bytes"], int) and found["lag_bytes"] >= 0
    assert 0 <= found["heartbeat_age"] < 60 and found["lag_seconds"] >= found["heartbeat_age"]
    text = manage("cache_invalidation_status")
    assert "Change data capture: slot 'ci_changes' on 'default'" in text.stdout
    # A slot further behind than allowed makes the status unhealthy, saying why.
    pg.sql("INSERT INTO shop_category (id, name, slug) VALUES (9, 'Rugs', 'rugs')")
    done = manage("cache_invalidation_status", CI_TEST_MAX_SLOT_LAG="0")
    assert done.returncode == 1
    assert "the replication slot 'ci_changes' is " in done.stderr
    assert "byte(s) behind (STATUS_MAX_SLOT_LAG is 0); is manage.py consume_changes running?" in (
        done.stderr
    )
    done = manage("cache_invalidation_status", CI_TEST_MAX_CHANGES_AGE="0")
    assert done.returncode == 1
    assert "manage.py consume_changes finished no round for " in done.stderr


def test_checks_warn_about_unbounded_wal_and_missing_replica_identity(pg):
    done = manage("check", "--database", "default")
    assert done.returncode == 0, done.stderr
    assert "cache_invalidation.W012" in done.stderr
    assert "W010" not in done.stderr and "W011" not in done.stderr
    pg.sql("ALTER TABLE shop_tag REPLICA IDENTITY DEFAULT")
    try:
        done = manage("check", "--database", "default")
        assert "(cache_invalidation.W011) Declared tables without REPLICA IDENTITY FULL: " \
            "shop_tag;" in done.stderr
    finally:
        pg.sql("ALTER TABLE shop_tag REPLICA IDENTITY FULL")


def test_check_warns_when_wal_level_is_not_logical(cluster):
    """The shared server runs wal_level = replica: the check says so (read-only)."""
    from urllib.parse import urlsplit

    given = urlsplit(os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"))
    shared = given._replace(path="/postgres").geturl()  # only read from: its settings
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"], cwd=ROOT,
        env={**child_env(), "CDC_DATABASE_URL": shared}, capture_output=True, text=True,
        timeout=120,
    )
    if "could not connect" in done.stderr or "Connection refused" in done.stderr:
        pytest.skip(f"the shared PostgreSQL at {shared} is not answering")
    assert "(cache_invalidation.W010) wal_level is 'replica' on database 'default'" in (
        done.stderr
    ), done.stderr
    refused = subprocess.run(
        [sys.executable, "manage.py", "consume_changes", "--once"], cwd=ROOT,
        env={**child_env(), "CDC_DATABASE_URL": shared}, capture_output=True, text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "wal_level is 'replica' on database 'default'; logical decoding needs wal_level = " \
        "logical" in refused.stderr


def test_through_rows_and_multi_table_children_reach_what_the_orm_path_reaches(pg):
    """For an m2m add, a multi-table child's save and a delete, the consumer's tags (decoding
    the ORM's own transaction, markers off) include every tag the ORM path published."""
    script = textwrap.dedent("""
        import json, django
        django.setup()
        from django.db import connection
        from cache_invalidation import signals, consumer, replication
        from testproject.shop.models import Category, Product, Tag
        from tests.testapp.models import Ebook
        seen = []
        signals.invalidation_published.connect(lambda events, **kw: seen.extend(events),
                                               weak=False)
        slot = "ci_changes"
        c = Category.objects.create(name="Lamps", slug="lamps-m2m")
        p = Product.objects.create(name="Arc", price=1, category=c)
        t = Tag.objects.create(name="brass")
        e = Ebook.objects.create(title="Dune", shelf=2, url="u")
        replication.advance(connection, slot, replication.flush_lsn(connection))

        def both(write):
            seen.clear()
            write()
            orm = {t for event in seen for t in event.tags}
            seen.clear()
            consumer.consume_round(connection, "default", slot, slot, 10000)
            return sorted(orm), sorted({t for event in seen for t in event.tags})

        def save_ebook():
            e.url = "v"
            e.save()

        found = {
            "m2m add": both(lambda: p.tags.add(t)),
            "m2m clear": both(lambda: p.tags.clear()),
            "child save": both(save_ebook),
            "delete": both(lambda: p.delete()),
        }
        Ebook.objects.all().delete()
        Tag.objects.all().delete()
        print(json.dumps(found))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for case, (orm, cdc) in found.items():
        assert orm, case
        assert set(orm) <= set(cdc), (case, set(orm) - set(cdc))
    # Precise, not coarse: the child's parent columns came from the same transaction.
    assert "shelf:2" in found["child save"][1]
    assert not any(t.endswith(":#") for t in found["child save"][1])


def test_slot_dropped_then_recreated_and_everything_invalidated(pg):
    """Changes made while the slot was gone are never decoded: --invalidate-all reaches the
    entries they made stale anyway."""
    seed(pg)
    pg.sql("SELECT pg_drop_replication_slot(%s)", [SLOT])
    pg.sql("UPDATE shop_product SET name = 'unseen' WHERE id = 5")  # while no slot exists
    done = manage("consume_changes", "--once")
    assert done.returncode == 1 and "--invalidate-all" in done.stderr
    assert manage("consume_changes", "--setup").returncode == 0
    tagged_cache.set("product-page", "cached", tags=["product:5"])
    tagged_cache.set("listing", "cached", tags=["shop.Product:*"])
    assert consume_once()["transactions"] == 0  # the change is not in the new slot
    dry = manage("consume_changes", "--invalidate-all", "--dry-run")
    assert dry.stdout.startswith("Would invalidate the collection and coarse tags of ")
    assert tagged_cache.get("product-page") == "cached"
    done = manage("consume_changes", "--invalidate-all")
    assert done.returncode == 0, done.stderr
    assert tagged_cache.get("product-page") is None  # through the coarse tag shop.Product:#
    assert tagged_cache.get("listing") is None


def test_loop_survives_a_postgresql_restart(pg, tmp_path):
    seed(pg)
    log = tmp_path / "consumer.log"
    with log.open("ab") as out:
        looping = subprocess.Popen(
            [sys.executable, "manage.py", "consume_changes", "--interval", "0.05"],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=out,
        )
    try:
        tagged_cache.set("product-page", "cached", tags=["product:5"])
        pg.sql("UPDATE shop_product SET name = 'before' WHERE id = 5")
        assert wait_for(lambda: tagged_cache.get("product-page") is None, timeout=30)
        pg.stop("fast")
        time.sleep(0.5)
        pg.start()
        tagged_cache.set("product-page", "cached", tags=["product:5"])
        pg.sql("UPDATE shop_product SET name = 'after' WHERE id = 5")
        assert wait_for(lambda: tagged_cache.get("product-page") is None, timeout=30), (
            log.read_text())
        assert looping.poll() is None, log.read_text()
    finally:
        looping.terminate()
        looping.wait(timeout=30)
    assert "Round failed, the slot did not move; retrying" in log.read_text()


def test_prometheus_view_and_dashboard_show_slot_lag_and_heartbeat(pg):
    consume_once()
    script = textwrap.dedent("""
        import django
        django.setup()
        from django.conf import settings
        from django.test import Client, override_settings
        from django.test.utils import setup_test_environment
        setup_test_environment()
        token = "t" * 20
        with override_settings(CACHE_INVALIDATION={**settings.CACHE_INVALIDATION,
                                                   "METRICS_TOKEN": token}):
            response = Client().get("/cache-invalidation/metrics/",
                                    HTTP_AUTHORIZATION=f"Bearer {token}")
        assert response.status_code == 200, response.status_code
        print(response.content.decode())
        from django.contrib.auth.models import User
        admin = User.objects.create_superuser("cdc-admin", "a@example.com", "pw")
        try:
            client = Client()
            client.force_login(admin)
            page = client.get("/admin/cache_invalidation/manualinvalidation/invalidate/")
            assert page.status_code == 200, page.status_code
            html = page.content.decode()
            assert 'id="ci-changes-lag"' in html and " bytes</td>" in html
            assert "s behind; last round" in html
        finally:
            admin.delete()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("cache_invalidation_changes_slot_lag_bytes",
                 "cache_invalidation_changes_lag_seconds",
                 "cache_invalidation_changes_heartbeat_age_seconds"):
        assert any(line.startswith(name + " ") for line in lines), name


def test_flush_invalidates_every_covered_model(pg):
    seed(pg)
    tagged_cache.set("listing", "cached", tags=["shop.Product:*"])
    tagged_cache.set("category-3", "cached", tags=["category:3"])  # declared: the coarse tag
    done = manage("flush", "--no-input")
    assert done.returncode == 0, done.stderr
    result = consume_once()
    assert result["events"] >= 2, result
    assert tagged_cache.get("listing") is None
    assert tagged_cache.get("category-3") is None


def test_changes_only_the_orm_path_publishes_nothing_the_consumer_does(pg):
    """CHANGES_ONLY: a save publishes no event at commit (the entry is still there), the
    consumer invalidates it; a value computed inside the writing transaction is still not
    stored; invalidate() still publishes at once."""
    seed(pg)
    script = textwrap.dedent("""
        import django
        django.setup()
        from django.db import transaction
        from cache_invalidation import invalidate, tagged_cache
        from testproject.shop.models import Product
        tagged_cache.set("product-page", "cached", tags=["product:5"])
        with transaction.atomic():
            p = Product.objects.get(pk=5)
            p.name = "Arc 2"
            p.save()
            value = tagged_cache.get_or_set("computed", lambda: "uncommitted", tags=["product:5"])
        assert value == "uncommitted"
        assert tagged_cache.get("computed") is None, "a value from uncommitted rows was stored"
        assert tagged_cache.get("product-page") == "cached", "the ORM path published"
        tagged_cache.set("manual", "cached", tags=["by-hand"])
        invalidate(tags=["by-hand"])
        assert tagged_cache.get("manual") is None
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          env=child_env(CDC_ONLY="1"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert tagged_cache.get("product-page") == "cached"
    assert consume_once()["events"] == 1
    assert tagged_cache.get("product-page") is None


def test_without_full_replica_identity_an_update_is_invalidated_coarsely(pg):
    pg.sql("INSERT INTO shop_tag (id, name) VALUES (7, 'brass')")
    pg.sql("ALTER TABLE shop_tag REPLICA IDENTITY DEFAULT")
    try:
        pg.sql("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", [SLOT])
        tagged_cache.set("tag-7", "cached", tags=["tag:7"])
        tagged_cache.set("tag-8", "cached", tags=["tag:8"])  # the old row is unknown: reached
        pg.sql("UPDATE shop_tag SET name = 'copper' WHERE id = 7")
        assert consume_once()["events"] == 1
        assert tagged_cache.get("tag-7") is None
        assert tagged_cache.get("tag-8") is None  # through the coarse tag shop.Tag:#
    finally:
        pg.sql("ALTER TABLE shop_tag REPLICA IDENTITY FULL")
        pg.sql("DELETE FROM shop_tag")
