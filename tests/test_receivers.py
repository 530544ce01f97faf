"""Committed writes -> events: old and new state, on_fields, m2m, rollback, batching."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from cache_invalidation import invalidate, no_invalidation, tagged_cache
from testproject.shop.models import Category, Product, Review, Tag
from tests.testapp.models import Article, Book, Ebook, Gadget, LabelledBookProxy, PlainBookProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shop():
    with no_invalidation():
        c3 = Category.objects.create(name="Lamps", slug="lamps")
        c4 = Category.objects.create(name="Chairs", slug="chairs")
        product = Product.objects.create(name="Arc", price=Decimal("10.00"), category=c3)
    return c3, c4, product


def test_save_invalidates_the_cached_entries_for_real(shop, recorder):
    c3, _, product = shop
    tagged_cache.set("page", "old", tags=[f"product:{product.pk}"])
    product.name = "Arc 2"
    product.save()
    assert tagged_cache.get("page") is None
    assert recorder.applied and recorder.applied[0]["deleted"] >= 1


def test_moving_a_product_invalidates_old_and_new_category(shop, recorder):
    c3, c4, product = shop
    product = Product.objects.get(pk=product.pk)
    product.category = c4
    with CaptureQueriesContext(connection) as queries:
        product.save()
    assert len(queries) == 1  # the UPDATE alone: the old state was remembered at load
    assert {f"category:{c3.pk}:products", f"category:{c4.pk}:products"} <= recorder.tags
    [event] = recorder.events
    assert event.type == "shop.Product.updated"
    assert event.entity_type == "shop.Product" and event.entity_id == str(product.pk)
    assert set(event.changed_fields) == {"category"}
    assert f"product:{product.pk}:detail" in event.keys


def test_on_fields_fire_only_when_their_field_changed(shop, recorder):
    c3, _, product = shop
    product.name = "Renamed"
    product.save()
    assert f"pricing:{c3.pk}" not in recorder.tags
    product.price = Decimal("12.00")
    product.save()
    assert f"pricing:{c3.pk}" in recorder.tags
    assert recorder.events[-1].changed_fields == ("price",)


def test_update_fields_is_respected(shop, recorder):
    c3, c4, product = shop
    product.category = c4  # changed in memory only, not written
    product.price = Decimal("99.00")
    product.save(update_fields=["price"])
    [event] = recorder.events
    assert event.changed_fields == ("price",)
    assert f"category:{c4.pk}:products" not in event.tags  # nothing moved in the database
    assert f"pricing:{c3.pk}" in event.tags
    # The unwritten change is still pending: saving it later sees the stored category 3.
    product.save(update_fields=["category"])
    assert {f"category:{c3.pk}:products", f"category:{c4.pk}:products"} <= set(
        recorder.events[-1].tags
    )


def test_create_and_delete(recorder):
    with no_invalidation():
        category = Category.objects.create(name="Desks", slug="desks")
    product = Product.objects.create(name="Oak", price=1, category=category)
    created = recorder.events[-1]
    assert created.type == "shop.Product.created"
    assert f"pricing:{category.pk}" in created.tags  # a new row fires every rule
    pk = product.pk
    product.delete()
    deleted = recorder.events[-1]
    assert deleted.type == "shop.Product.deleted"
    assert deleted.entity_id == str(pk)
    assert {f"product:{pk}", f"category:{category.pk}:products"} <= set(deleted.tags)


def test_queryset_delete_is_covered(shop, recorder):
    c3, _, product = shop
    Product.objects.filter(pk=product.pk).delete()
    assert f"product:{product.pk}" in recorder.tags


def test_m2m_add_remove_clear_from_both_sides(shop, recorder):
    _, _, product = shop
    with no_invalidation():
        red, blue = Tag.objects.create(name="red"), Tag.objects.create(name="blue")
    product.tags.add(red, blue)
    assert {f"product:{product.pk}:tags", f"tag:{red.pk}", f"tag:{blue.pk}"} <= recorder.tags
    m2m = [e for e in recorder.events if e.type == "shop.Product.m2m_changed"]
    assert [e.changed_fields for e in m2m] == [("tags",)]
    # The through rows' own event names the through model (its writes invalidate its readers).
    assert "shop.Product_tags:*" in recorder.tags
    recorder.published.clear()
    red.products.remove(product)  # the reverse side
    assert {f"tag:{red.pk}", f"product:{product.pk}:tags", f"product:{product.pk}"} <= recorder.tags
    recorder.published.clear()
    blue.products.clear()
    assert {f"tag:{blue.pk}", f"product:{product.pk}:tags"} <= recorder.tags
    recorder.published.clear()
    product.tags.add(red)
    product.tags.clear()
    assert f"tag:{red.pk}" in recorder.tags


def test_rollback_emits_nothing(shop, recorder):
    _, _, product = shop
    tagged_cache.set("page", "cached", tags=[f"product:{product.pk}"])
    with pytest.raises(RuntimeError), transaction.atomic():
        product.name = "never"
        product.save()
        raise RuntimeError("boom")
    assert recorder.published == []
    assert tagged_cache.get("page") == "cached"


def test_savepoint_rollback_drops_only_its_own_events(shop, recorder):
    c3, c4, product = shop
    with transaction.atomic():
        Review.objects.create(product=product, rating=5, text="kept")
        try:
            with transaction.atomic():
                product.category = c4
                product.save()
                raise RuntimeError("inner")
        except RuntimeError:
            pass
    assert len(recorder.published) == 1
    assert f"category:{c4.pk}:products" not in recorder.tags
    assert f"product:{product.pk}" in recorder.tags  # from the review that committed


def test_first_event_in_a_rolled_back_savepoint_does_not_lose_later_ones(shop, recorder):
    _, _, product = shop
    with transaction.atomic():
        try:
            with transaction.atomic():
                Review.objects.create(product=product, rating=1, text="dropped")
                raise RuntimeError
        except RuntimeError:
            pass
        review = Review.objects.create(product=product, rating=4, text="kept")
    assert [e.entity_id for e in recorder.events] == [str(review.pk)]


def test_one_transaction_publishes_one_deduplicated_batch(shop, recorder):
    c3, _, product = shop
    with transaction.atomic():
        for i in range(5):
            product.name = f"n{i}"
            product.save()
        for i in range(3):
            Review.objects.create(product=product, rating=i + 1, text="x")
        invalidate(tags=[f"product:{product.pk}"], keys=["extra"])
        assert recorder.published == []  # nothing before commit
    [batch] = recorder.published
    product_events = [e for e in batch if e.entity_type == "shop.Product"]
    assert len(product_events) == 1  # five saves of one row coalesce
    assert len(product_events[0].tags) == len(set(product_events[0].tags))
    assert recorder.applied[0]["events"] == batch


def test_state_moves_forward_only_on_commit(shop, recorder):
    c3, c4, product = shop
    product = Product.objects.get(pk=product.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        product.category = c4
        product.save()
        raise RuntimeError
    # The row is still in category 3; moving to 4 again must invalidate category 3 as well.
    product.save()
    assert f"category:{c3.pk}:products" in recorder.tags


def test_fixture_loading_invalidates_from_the_rows_fields(tmp_path, recorder):
    fixture = tmp_path / "books.json"
    fixture.write_text('[{"model": "testapp.book", "pk": 50, "fields": {"title": "F", "shelf": 2}}]')
    call_command("loaddata", str(fixture), verbosity=0)
    assert Book.objects.filter(pk=50).exists()
    assert [e.type for e in recorder.events] == ["testapp.Book.created"]
    assert "testapp.Book:50" in recorder.tags


def test_no_invalidation_suspends_and_nests(recorder):
    with no_invalidation():
        with no_invalidation():
            Book.objects.create(title="a")
        Book.objects.create(title="b")
    assert recorder.published == []
    Book.objects.create(title="c")
    assert len(recorder.published) == 1


def test_no_invalidation_as_decorator(recorder):
    @no_invalidation()
    def load():
        Book.objects.create(title="quiet")

    load()
    assert recorder.published == []


def test_abstract_inherited_declaration_fires(recorder):
    article = Article.objects.create(title="Hello")
    assert {f"stamped:{article.pk}", "title:Hello"} <= recorder.tags


def test_proxy_saves_apply_the_concrete_models_rules(recorder):
    book = PlainBookProxy.objects.create(title="p", shelf=7)
    assert {f"book:{book.pk}", "shelf:7"} <= recorder.tags
    labelled = LabelledBookProxy.objects.get(pk=book.pk)
    labelled.shelf = 8
    labelled.save()
    assert {f"label:{book.pk}", "shelf:7", "shelf:8"} <= set(recorder.events[-1].tags)


def test_multi_table_child_invalidates_parent_tags(recorder):
    ebook = Ebook.objects.create(title="e", shelf=3)
    assert {f"ebook:{ebook.pk}", f"book:{ebook.pk}", "shelf:3"} <= recorder.tags


def test_instance_not_loaded_from_the_database_costs_one_query(recorder):
    book = Book.objects.create(title="x", shelf=1)
    recorder.published.clear()
    detached = Book(pk=book.pk, title="x", shelf=2)  # built by hand, never loaded
    detached.save()
    assert {"shelf:1", "shelf:2"} <= recorder.tags  # old shelf read back with one query


def test_pk_with_default_never_queries_for_old_state(recorder):
    with CaptureQueriesContext(connection) as queries:
        Gadget.objects.create(kind="phone")
    assert len(queries) == 1
    assert "kind:phone" in recorder.tags


def test_deferred_fields_are_read_once_when_needed(recorder):
    book = Book.objects.create(title="d", shelf=4)
    recorder.published.clear()
    partial = Book.objects.only("title").get(pk=book.pk)
    partial.title = "d2"
    partial.save()
    assert "shelf:4" in recorder.tags


def test_refresh_from_db_keeps_the_remembered_state_current(recorder):
    book = Book.objects.create(title="r", shelf=1)
    Book.objects.filter(pk=book.pk).update(shelf=5)  # elsewhere
    book.refresh_from_db()
    book.shelf = 6
    book.save()
    assert {"shelf:5", "shelf:6"} <= set(recorder.events[-1].tags)


def test_manual_invalidate_outside_a_transaction_applies_now(recorder):
    tagged_cache.set("k", 1, tags=["manual"])
    event = invalidate(tags=["manual"])
    assert event.type == "manual"
    assert tagged_cache.get("k") is None


def test_manual_invalidate_validates_input():
    with pytest.raises(TypeError, match="not a single string"):
        invalidate(tags="product:1")
    with pytest.raises(ValueError, match="at least one tag or key"):
        invalidate()


def test_undeclared_models_emit_nothing(recorder):
    from tests.testapp.models import Undeclared

    Undeclared.objects.create(name="x")
    assert recorder.published == []


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_events_follow_the_commit_of_the_database_written(recorder):
    with transaction.atomic(using="other"):
        with transaction.atomic(using="default"):
            book = Book.objects.using("other").create(title="elsewhere", shelf=9)
        assert recorder.published == []  # "default" committed, but the write was on "other"
    assert {f"book:{book.pk}", "shelf:9"} <= recorder.tags
    recorder.published.clear()
    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        Book.objects.using("other").filter(pk=book.pk).get().delete()
        raise RuntimeError
    assert recorder.published == []


def test_on_fields_rule_fires_when_a_field_its_template_reads_changed(shop, recorder):
    """Moving a product changes the pricing of both categories even if the price did not."""
    c3, c4, product = shop
    product.category = c4
    product.save()
    assert {f"pricing:{c3.pk}", f"pricing:{c4.pk}"} <= recorder.tags
    assert f"product:{product.pk}:tags" not in recorder.tags  # the tags rule stayed quiet
