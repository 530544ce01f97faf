"""Bulk writes: update(), bulk_create(), bulk_update() and queryset delete() invalidate exactly
the rows they wrote, old and new state, as one event per call in one batch per transaction."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

import django
import pytest
from django.core.exceptions import FieldDoesNotExist
from django.db import connection, connections, transaction
from django.db.models import Count, F
from django.test.utils import CaptureQueriesContext

from cache_invalidation import no_invalidation, rowstates, tagged_cache
from cache_invalidation.registry import registry
from cache_invalidation.resolve import resolve
from testproject.shop.models import Category, Product, Review
from tests.faults import row
from tests.testapp.models import Ebook, Gadget

pytestmark = pytest.mark.django_db(transaction=True)


def declared(tags):
    """The declared tags among ``tags`` (automatic ones read like ``shop.Product:7``)."""
    return {t for t in tags if "." not in t.split(":", 1)[0]}


def statements(queries):
    """The SELECT/UPDATE/INSERT/DELETE statements captured (not BEGIN, COMMIT, savepoints)."""
    return [
        q["sql"] for q in queries.captured_queries
        if q["sql"].split(None, 1)[0].upper() in ("SELECT", "UPDATE", "INSERT", "DELETE")
    ]


def chunks_of(n):
    """Statements needed for ``n`` keys (see cache_invalidation.rowstates.chunks)."""
    size = rowstates.CHUNK if connection.features.max_query_params else rowstates.LARGE_CHUNK
    return -(-n // size)


def product_tags(product_pk, category_pk, *, every_rule=False):
    """Product's declared tags for a row whose price or category changed; ``every_rule`` for a
    row created or deleted (then the m2m rule on ``tags`` fires too)."""
    tags = {f"product:{product_pk}", f"category:{category_pk}:products", f"pricing:{category_pk}"}
    if every_rule:
        tags.add(f"product:{product_pk}:tags")
    return tags


@pytest.fixture
def shop():
    with no_invalidation():
        c3 = Category.objects.create(name="Lamps", slug="lamps")
        c4 = Category.objects.create(name="Chairs", slug="chairs")
        c5 = Category.objects.create(name="Desks", slug="desks")
        products = [
            Product.objects.create(name=f"P{i}", price=Decimal("10.00"), category=c3)
            for i in range(3)
        ]
        other = Product.objects.create(name="Other", price=Decimal("5.00"), category=c5)
    return c3, c4, c5, products, other


# update() ----------------------------------------------------------------------------------


def test_update_moving_rows_invalidates_old_and_new_category_for_real(shop, recorder):
    c3, c4, c5, products, _other = shop
    for p in products:
        tagged_cache.set(f"product:{p.pk}:detail", "detail")  # a plain key of the declaration
        tagged_cache.set(f"page:{p.pk}", "page", tags=[f"product:{p.pk}"])
    tagged_cache.set("list:3", "old listing", tags=[f"category:{c3.pk}:products"])
    tagged_cache.set("list:4", "old listing", tags=[f"category:{c4.pk}:products"])
    tagged_cache.set("list:5", "kept", tags=[f"category:{c5.pk}:products"])

    rows = Product.objects.filter(category=c3).update(category=c4)

    assert rows == 3
    [batch] = recorder.published
    [event] = batch
    assert event.type == "shop.Product.bulk_updated"
    assert event.entity_type == "shop.Product" and event.entity_id == ""
    assert event.metadata == {"rows": 3}
    assert event.changed_fields == ("category",)
    # A move fires the pricing rule of both categories (the rule reads category_id).
    assert declared(event.tags) == {
        *(f"product:{p.pk}" for p in products),
        f"category:{c3.pk}:products", f"category:{c4.pk}:products",
        f"pricing:{c3.pk}", f"pricing:{c4.pk}",
    }
    assert set(event.keys) == {f"product:{p.pk}:detail" for p in products}
    # Whatever resolve() yields for a row (automatic tags included) is in the event.
    old = {"id": products[0].pk, "category_id": c3.pk, "price": Decimal("10.00")}
    new = {**old, "category_id": c4.pk}
    assert set(resolve(registry.get(Product), old, new, ("category",))[0]) <= set(event.tags)
    for p in products:
        assert tagged_cache.get(f"product:{p.pk}:detail") is None
        assert tagged_cache.get(f"page:{p.pk}") is None
    assert tagged_cache.get("list:3") is None
    assert tagged_cache.get("list:4") is None
    assert tagged_cache.get("list:5") == "kept"
    assert set(Product.objects.filter(category=c4).values_list("pk", flat=True)) == {
        p.pk for p in products
    }


def test_on_fields_fire_only_when_their_field_changed(shop, recorder):
    c3, _, _, products, _ = shop
    Product.objects.filter(category=c3).update(name="Renamed")
    [event] = recorder.events
    assert event.changed_fields == ()
    assert declared(event.tags) == {
        *(f"product:{p.pk}" for p in products), f"category:{c3.pk}:products"
    }
    recorder.published.clear()
    Product.objects.filter(category=c3).update(price=Decimal("11.00"))
    [event] = recorder.events
    assert event.changed_fields == ("price",)
    assert f"pricing:{c3.pk}" in event.tags


def test_update_with_f_expressions_reads_the_values_it_wrote(shop, recorder):
    c3, c4, _, products, _ = shop
    first = products[0]
    rows = Product.objects.filter(pk=first.pk).update(
        price=F("price") + 1, category_id=F("category_id") + (c4.pk - c3.pk)
    )
    assert rows == 1
    [event] = recorder.events
    assert set(event.changed_fields) == {"price", "category"}
    assert declared(event.tags) == product_tags(first.pk, c3.pk) | product_tags(first.pk, c4.pk)
    assert Product.objects.get(pk=first.pk).price == Decimal("11.00")


def test_an_update_that_matches_no_row_emits_nothing(shop, recorder):
    with CaptureQueriesContext(connection) as queries:
        assert Product.objects.filter(name="nothing like this").update(price=1) == 0
    assert recorder.published == []
    assert len(statements(queries)) == 1  # the SELECT; no UPDATE is needed


def test_a_rolled_back_update_emits_nothing(shop, recorder):
    c3, c4, _, products, _ = shop
    tagged_cache.set("list:3", "cached", tags=[f"category:{c3.pk}:products"])
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.filter(category=c3).update(category=c4)
        raise RuntimeError("boom")
    assert recorder.published == []
    assert tagged_cache.get("list:3") == "cached"
    assert Product.objects.filter(category=c3).count() == len(products)


def test_a_rolled_back_savepoint_drops_only_its_update(shop, recorder):
    c3, c4, c5, _products, other = shop
    with transaction.atomic():
        Product.objects.filter(pk=other.pk).update(name="kept")
        try:
            with transaction.atomic():
                Product.objects.filter(category=c3).update(category=c4)
                raise RuntimeError
        except RuntimeError:
            pass
    [event] = recorder.events
    assert declared(event.tags) == {f"product:{other.pk}", f"category:{c5.pk}:products"}


def test_update_inside_atomic_with_other_saves_is_one_batch(shop, recorder):
    c3, c4, _, _products, other = shop
    with transaction.atomic():
        other.name = "Saved"
        other.save()
        Product.objects.filter(category=c3).update(category=c4)
        Review.objects.create(product=other, rating=5, text="fine")
        assert recorder.published == []
    [batch] = recorder.published
    assert sorted(e.type for e in batch) == [
        "shop.Product.bulk_updated", "shop.Product.updated", "shop.Review.created"
    ]


def test_a_ten_thousand_row_update_is_one_event_in_one_batch(shop, recorder):
    _, c4, _, _, other = shop
    with no_invalidation():
        c6 = Category.objects.create(name="Bulk", slug="bulk")
        Product.objects.bulk_create(
            Product(name=f"Bulk {i}", price=Decimal("1.00"), category=c6) for i in range(10_000)
        )
    pks = set(Product.objects.filter(category=c6).values_list("pk", flat=True))
    with transaction.atomic():
        other.save()
        with CaptureQueriesContext(connection) as queries:
            rows = Product.objects.filter(category=c6).update(category=c4)
    assert rows == 10_000
    assert len(recorder.published) == 1
    [bulk_event] = [e for e in recorder.events if e.type == "shop.Product.bulk_updated"]
    assert bulk_event.metadata == {"rows": 10_000}
    assert declared(bulk_event.tags) == {
        *(f"product:{pk}" for pk in pks),
        f"category:{c6.pk}:products", f"category:{c4.pk}:products",
        f"pricing:{c6.pk}", f"pricing:{c4.pk}",
    }
    assert len(bulk_event.keys) == 10_000
    # One SELECT of the old states, the UPDATEs and the SELECTs of the new states, in chunks.
    assert len(statements(queries)) == 1 + 2 * chunks_of(10_000)


def test_query_cost_of_ten_thousand_row_bulk_writes(shop):
    """The numbers README.rst quotes: statements issued, Django alone and with the app."""
    _, c4, c5, _, _ = shop
    n = 10_000
    measured = {}

    def measure(name, write):
        with no_invalidation(), CaptureQueriesContext(connection) as django_alone:
            write(quiet=True)
        with CaptureQueriesContext(connection) as with_app:
            write(quiet=False)
        measured[name] = (len(statements(django_alone)), len(statements(with_app)))

    made = {}

    def create(quiet):
        made[quiet] = Product.objects.bulk_create(
            Product(name=f"B{i}", price=1, category=c4) for i in range(n)
        )

    measure("bulk_create", create)

    def update_watched(quiet):
        ids = [p.pk for p in made[quiet]]
        Product.objects.filter(pk__gte=min(ids), pk__lte=max(ids)).update(category=c5)

    def update_unwatched(quiet):
        ids = [p.pk for p in made[quiet]]
        Product.objects.filter(pk__gte=min(ids), pk__lte=max(ids)).update(name="renamed")

    def bulk_update_price(quiet):
        for p in made[quiet]:
            p.price = 2
        Product.objects.bulk_update(made[quiet], ["price"])

    def delete(quiet):
        ids = [p.pk for p in made[quiet]]
        Product.objects.filter(pk__gte=min(ids), pk__lte=max(ids)).delete()

    measure("update (watched field)", update_watched)
    measure("update (other field)", update_unwatched)
    measure("bulk_update", bulk_update_price)
    measure("delete", delete)
    print(f"\n{connection.vendor}, {n} rows: (Django alone, with the app) =", measured)

    chunks = chunks_of(n)
    django_update_batches = measured["bulk_update"][0]
    assert measured == {
        "bulk_create": (measured["bulk_create"][0],) * 2,  # no query added
        "update (watched field)": (1, 1 + 2 * chunks),
        "update (other field)": (1, 1 + chunks),
        "bulk_update": (django_update_batches, 3 * django_update_batches),
        "delete": (measured["delete"][0],) * 2,  # no query added
    }


def test_update_of_aggregate_filtered_and_distinct_querysets(shop, recorder):
    c3, _, _, products, _ = shop
    with no_invalidation():
        Review.objects.create(product=products[0], rating=5, text="only one reviewed")
    unreviewed = Product.objects.annotate(n=Count("reviews")).filter(n=0, category=c3)
    assert unreviewed.update(price=Decimal("7.00")) == 2
    [event] = recorder.events
    assert declared(event.tags) == product_tags(products[1].pk, c3.pk) | product_tags(
        products[2].pk, c3.pk
    )
    recorder.published.clear()
    reviewed = Product.objects.filter(reviews__rating__gte=1, category=c3).distinct()
    assert reviewed.update(price=Decimal("8.00")) == 1
    [event] = recorder.events
    assert declared(event.tags) == product_tags(products[0].pk, c3.pk)


@pytest.mark.skipif(
    not connection.features.has_select_for_update,
    reason="needs row locks and concurrent writers (SQLite locks the whole database)",
)
def test_a_row_committed_between_the_read_and_the_update_is_not_written_unseen(shop, recorder):
    c3, c4, _, products, _ = shop
    read_done, inserted = threading.Event(), threading.Event()
    outcome = {}

    def pause_before_update(execute, sql, params, many, context):
        if sql.startswith("UPDATE") and not read_done.is_set():
            read_done.set()  # the old states are read and locked; the UPDATE is next
            assert inserted.wait(10)
        return execute(sql, params, many, context)

    def writer():
        try:
            with connections["default"].execute_wrapper(pause_before_update):
                outcome["rows"] = Product.objects.filter(category=c3).update(category=c4)
        finally:
            connections["default"].close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert read_done.wait(10)
    late = Product.objects.create(name="Late", price=1, category=c3)  # commits at once
    inserted.set()
    thread.join(10)
    assert outcome["rows"] == len(products)
    assert Product.objects.get(pk=late.pk).category_id == c3.pk  # not moved without being seen
    [bulk_event] = [e for e in recorder.events if e.type == "shop.Product.bulk_updated"]
    assert f"product:{late.pk}" not in bulk_event.tags
    assert bulk_event.metadata == {"rows": len(products)}


def test_related_manager_updates_are_covered(shop, recorder):
    c3, _c4, _, products, _ = shop
    c3.products.update(price=Decimal("2.00"))
    [event] = recorder.events
    assert {f"product:{p.pk}" for p in products} <= set(event.tags)
    assert f"pricing:{c3.pk}" in event.tags


def test_update_of_a_multi_table_child_covers_the_parent_rules(recorder):
    with no_invalidation():
        ebook = Ebook.objects.create(title="T", shelf=1)
    assert Ebook.objects.filter(pk=ebook.pk).update(shelf=2) == 1
    [event] = recorder.events
    assert event.type == "testapp.Ebook.bulk_updated"
    assert declared(event.tags) == {f"book:{ebook.pk}", f"ebook:{ebook.pk}", "shelf:1", "shelf:2"}


# bulk_create() -----------------------------------------------------------------------------


def test_bulk_create_invalidates_the_new_rows(shop, recorder):
    _, c4, c5, _, _ = shop
    tagged_cache.set("list:4", "empty listing", tags=[f"category:{c4.pk}:products"])
    created = Product.objects.bulk_create(
        [
            Product(name="N1", price=Decimal("1.00"), category=c4),
            Product(name="N2", price=Decimal("2.00"), category=c5),
        ]
    )
    [event] = recorder.events
    assert event.type == "shop.Product.bulk_created" and event.metadata == {"rows": 2}
    assert declared(event.tags) == product_tags(
        created[0].pk, c4.pk, every_rule=True
    ) | product_tags(created[1].pk, c5.pk, every_rule=True)
    assert set(event.keys) == {f"product:{p.pk}:detail" for p in created}
    assert tagged_cache.get("list:4") is None


def test_bulk_created_objects_remember_their_state(shop, recorder):
    _, c4, c5, _, _ = shop
    [product] = Product.objects.bulk_create([Product(name="N", price=1, category=c4)])
    recorder.published.clear()
    product.category = c5
    with CaptureQueriesContext(connection) as queries:
        product.save()
    assert len(statements(queries)) == 1  # the UPDATE: the old state is known without a query
    assert {f"category:{c4.pk}:products", f"category:{c5.pk}:products"} <= recorder.tags


def test_bulk_create_with_update_conflicts_invalidates_the_overwritten_rows(shop, recorder):
    c3, c4, c5, products, _ = shop
    existing = products[0]
    created = Product.objects.bulk_create(
        [
            Product(pk=existing.pk, name="Upserted", price=Decimal("20.00"), category=c4),
            Product(name="Fresh", price=Decimal("3.00"), category=c5),
        ],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["name", "price", "category"],
    )
    [event] = recorder.events
    assert event.type == "shop.Product.bulk_created" and event.metadata == {"rows": 2}
    fresh = created[1]
    if django.VERSION < (5, 0):  # Django 4.2 sets no key on the objects an upsert inserted
        assert fresh.pk is None
        fresh_tags = {f"category:{c5.pk}:products", f"pricing:{c5.pk}"}  # templates without {pk}
    else:
        fresh_tags = product_tags(fresh.pk, c5.pk, every_rule=True)
    assert declared(event.tags) == (
        product_tags(existing.pk, c3.pk)  # the overwritten row's old state
        | product_tags(existing.pk, c4.pk)
        | fresh_tags
    )
    assert set(event.changed_fields) == {"price", "category"}
    assert Product.objects.get(pk=existing.pk).category_id == c4.pk


def test_update_conflicts_reads_what_the_upsert_kept(shop, recorder):
    c3, c4, _, products, _ = shop
    existing = products[0]
    Product.objects.bulk_create(
        [Product(pk=existing.pk, name="X", price=Decimal("30.00"), category=c4)],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["price"],  # the stored category stays 3
    )
    [event] = recorder.events
    assert declared(event.tags) == product_tags(existing.pk, c3.pk)
    assert event.changed_fields == ("price",)


def test_update_conflicts_on_a_unique_field_other_than_the_key(recorder):
    with no_invalidation():
        gadget = Gadget.objects.create(kind="old")
    Gadget.objects.bulk_create(
        [Gadget(id=gadget.pk, kind="new")],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["kind"],
    )
    [event] = recorder.events
    assert declared(event.tags) == {f"gadget:{gadget.pk}", "kind:old", "kind:new"}


def test_bulk_create_without_keys_invalidates_what_it_can_render(shop, recorder):
    _, c4, _, _, _ = shop
    objs = [Product(name="Ignored conflicts", price=1, category=c4)]
    Product.objects.bulk_create(objs, ignore_conflicts=True)
    [event] = recorder.events
    if objs[0].pk is not None:  # pragma: no cover - a backend that returns keys here
        assert f"product:{objs[0].pk}" in event.tags
    else:
        assert declared(event.tags) == {f"category:{c4.pk}:products", f"pricing:{c4.pk}"}
        assert event.keys == ()  # the only key template names {pk}
        collection, _ = resolve(registry.get(Product), None, None, None)
        assert set(collection) <= set(event.tags)  # the model's collection tags, if any


# bulk_update() -----------------------------------------------------------------------------


def test_bulk_update_invalidates_old_and_new_state(shop, recorder):
    c3, c4, c5, products, other = shop
    tagged_cache.set("list:3", "cached", tags=[f"category:{c3.pk}:products"])
    products[0].category = c4
    products[1].price = Decimal("99.00")
    other.category = c3
    rows = Product.objects.bulk_update([products[0], products[1], other], ["category", "price"])
    assert rows == 3
    [batch] = recorder.published
    [event] = batch
    assert event.type == "shop.Product.bulk_updated" and event.metadata == {"rows": 3}
    assert set(event.changed_fields) == {"category", "price"}
    assert declared(event.tags) == (
        product_tags(products[0].pk, c3.pk) | product_tags(products[0].pk, c4.pk)
        | product_tags(products[1].pk, c3.pk)
        | product_tags(other.pk, c5.pk) | product_tags(other.pk, c3.pk)
    )
    assert tagged_cache.get("list:3") is None


def test_bulk_update_counts_only_the_given_fields_as_changed(shop, recorder):
    c3, c4, _, products, _ = shop
    product = products[0]
    product.category = c4  # in memory only: not among the fields written
    product.price = F("price") * 2
    Product.objects.bulk_update([product], ["price"])
    [event] = recorder.events
    assert event.changed_fields == ("price",)
    assert declared(event.tags) == product_tags(product.pk, c3.pk)
    assert Product.objects.get(pk=product.pk).price == Decimal("20.00")


def test_bulk_update_in_several_batches_is_one_event(shop, recorder):
    c3, c4, _, products, _ = shop
    for p in products:
        p.category = c4
    Product.objects.bulk_update(products, ["category"], batch_size=1)
    [batch] = recorder.published
    [event] = batch
    assert event.metadata == {"rows": 3}
    assert {f"category:{c3.pk}:products", f"category:{c4.pk}:products"} <= set(event.tags)


def test_bulk_update_moves_the_remembered_state_on_commit_only(shop, recorder):
    c3, c4, c5, products, _ = shop
    product = products[0]
    with pytest.raises(RuntimeError), transaction.atomic():
        product.category = c4
        Product.objects.bulk_update([product], ["category"])
        raise RuntimeError
    product.category = c5
    product.save()  # the row is still in category 3
    assert f"category:{c3.pk}:products" in recorder.tags
    recorder.published.clear()
    product.category = c4
    Product.objects.bulk_update([product], ["category"])
    recorder.published.clear()
    product.category = c3
    with CaptureQueriesContext(connection) as queries:
        product.save()
    assert len(statements(queries)) == 1
    assert {f"category:{c4.pk}:products", f"category:{c3.pk}:products"} <= recorder.tags
    assert f"category:{c5.pk}:products" not in recorder.tags


# delete() ----------------------------------------------------------------------------------


def test_queryset_delete_is_one_event_with_every_rows_tags(shop, recorder):
    c3, _, _, products, other = shop
    for p in products:
        tagged_cache.set(f"page:{p.pk}", "page", tags=[f"product:{p.pk}"])
    tagged_cache.set("page:other", "kept", tags=[f"product:{other.pk}"])
    pks = [p.pk for p in products]
    deleted, per_model = Product.objects.filter(category=c3).delete()
    assert (deleted, per_model) == (3, {"shop.Product": 3})
    [batch] = recorder.published
    [event] = batch
    assert event.type == "shop.Product.bulk_deleted" and event.entity_id == ""
    assert event.metadata == {"rows": 3}
    assert declared(event.tags) == set().union(
        *(product_tags(pk, c3.pk, every_rule=True) for pk in pks)
    )
    assert set(event.keys) == {f"product:{pk}:detail" for pk in pks}
    assert all(tagged_cache.get(f"page:{p.pk}") is None for p in products)
    assert tagged_cache.get("page:other") == "kept"


def test_cascade_delete_invalidates_the_cascaded_rows(shop, recorder):
    c3, _, _, products, _ = shop
    with no_invalidation():
        review = Review.objects.create(product=products[0], rating=3, text="ok")
    tagged_cache.set("list:3", "cached", tags=[f"category:{c3.pk}:products"])
    pks = [p.pk for p in products]
    Category.objects.filter(pk=c3.pk).delete()
    [batch] = recorder.published
    by_type = {e.type: e for e in batch}
    assert set(by_type) == {
        "shop.Category.bulk_deleted", "shop.Product.bulk_deleted", "shop.Review.bulk_deleted"
    }
    assert declared(by_type["shop.Category.bulk_deleted"].tags) == {f"category:{c3.pk}"}
    assert declared(by_type["shop.Product.bulk_deleted"].tags) == set().union(
        *(product_tags(pk, c3.pk, every_rule=True) for pk in pks)
    )
    assert declared(by_type["shop.Review.bulk_deleted"].tags) >= {
        f"review:{review.pk}", f"product:{pks[0]}"
    }
    assert tagged_cache.get("list:3") is None


def test_instance_delete_still_emits_per_row_events(shop, recorder):
    _, _, _, products, _ = shop
    pk = products[0].pk
    products[0].delete()
    [event] = recorder.events
    assert event.type == "shop.Product.deleted" and event.entity_id == str(pk)


def test_delete_inside_atomic_joins_the_batch(shop, recorder):
    c3, _, _, _products, other = shop
    with transaction.atomic():
        other.name = "Saved"
        other.save()
        Product.objects.filter(category=c3).delete()
    [batch] = recorder.published
    assert sorted(e.type for e in batch) == ["shop.Product.bulk_deleted", "shop.Product.updated"]


# no_invalidation() -------------------------------------------------------------------------


def test_no_invalidation_suppresses_every_bulk_write(shop, recorder):
    c3, c4, c5, _products, other = shop
    with no_invalidation():
        with CaptureQueriesContext(connection) as queries:
            Product.objects.filter(category=c3).update(name="quiet")
        assert len(statements(queries)) == 1  # Django's UPDATE alone
        created = Product.objects.bulk_create([Product(name="Q", price=1, category=c4)])
        other.category = c4
        Product.objects.bulk_update([other], ["category"])
        Product.objects.filter(pk=created[0].pk).delete()
    assert recorder.published == []
    # A later save starts from what bulk_update stored, not from the state loaded before it.
    other.category = c3
    other.save()
    assert f"category:{c4.pk}:products" in recorder.tags
    assert f"category:{c5.pk}:products" not in recorder.tags


def test_django_errors_are_unchanged_and_leave_the_transaction_usable(shop, recorder):
    _, _, _, _products, other = shop
    with transaction.atomic():
        with pytest.raises(FieldDoesNotExist, match="nonexistent"):
            Product.objects.update(nonexistent=1)
        with pytest.raises(TypeError, match="slice"):
            Product.objects.all()[:1].update(name="x")
        with pytest.raises(ValueError, match="primary key"):
            Product.objects.bulk_update([Product(name="no key", price=1)], ["name"])
        other.name = "still fine"
        other.save()
    assert [e.type for e in recorder.events] == ["shop.Product.updated"]


def test_bulk_writes_invalidate_after_the_app_registry_was_reloaded(shop, recorder):
    # override_settings(INSTALLED_APPS=...) clears the app registry's caches, and models then
    # hand out fresh manager copies and a new _base_manager: they must invalidate still.
    from django.conf import settings as django_settings
    from django.test import override_settings

    _, _, _, products, _ = shop
    with override_settings(INSTALLED_APPS=[*django_settings.INSTALLED_APPS]):
        pass
    Product.objects.filter(pk=products[0].pk).update(price=Decimal("9.00"))
    assert f"product:{products[0].pk}" in recorder.tags


@row("An escalated bulk update() whose rows render a template with a NULL foreign key",
     "600 testapp.Novel rows, half with author NULL (their tag author:None:books matches no "
     "coarse pattern, which expects digits), changed by one queryset update() with "
     "MAX_TAGS_PER_EVENT 100; entries cached under author:None:books and author:<pk>:books",
     "the event is escalated to testapp.Novel:# plus the tags no coarse tag covers: both "
     "entries are gone, the WARNING says '1 tag(s) no coarse tag covers'")
def test_an_escalated_update_keeps_the_tags_no_coarse_tag_covers(settings, caplog):
    """Storm control (see also tests/test_storm.py) on a bulk write."""
    from tests.testapp.models import Author, Novel

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 100}
    with no_invalidation():
        author = Author.objects.create(name="a")
        Novel.objects.bulk_create(
            [Novel(title=str(i), author=author if i % 2 else None) for i in range(600)]
        )
    tagged_cache.set("orphans", "x", tags=["author:None:books"])
    tagged_cache.set("authored", "x", tags=[f"author:{author.pk}:books"])
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        assert Novel.objects.update(title="t") == 600
    assert tagged_cache.get("authored") is None  # through the coarse tag
    assert tagged_cache.get("orphans") is None  # precisely: no coarse tag covers it
    [record] = [r for r in caplog.records if "escalated" in r.getMessage()]
    assert "to ['testapp.Novel:#'] and 1 tag(s) no coarse tag covers:" in record.getMessage()
