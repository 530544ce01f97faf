"""Automatic dependency capture: values are tagged with the rows and querysets they read."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Max

from cache_invalidation import cached, no_invalidation, tagged_cache
from cache_invalidation.capture import capturing
from testproject.shop.models import Category, Product, Review
from tests.testapp.models import Book, Ebook

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lamps():
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        arc = Product.objects.create(name="Arc", price=Decimal("10"), category=category)
        Product.objects.create(name="Bow", price=Decimal("20"), category=category)
    return category, arc


def test_loaded_instance_tags_the_value(lamps):
    _, arc = lamps
    with capturing() as found:
        Product.objects.get(pk=arc.pk)
    assert found == {f"shop.Product:{arc.pk}"}  # a key lookup: no collection tag


def test_a_save_of_a_row_read_by_key_invalidates_without_declared_tags(lamps):
    _, arc = lamps
    name = tagged_cache.get_or_set("arc-name", lambda: Product.objects.get(pk=arc.pk).name)
    assert name == "Arc"
    arc.name = "Arc 2"
    arc.save()
    assert tagged_cache.get("arc-name") is None


def test_other_rows_do_not_touch_a_key_lookup(lamps):
    category, arc = lamps
    tagged_cache.get_or_set("arc-name", lambda: Product.objects.get(pk=arc.pk).name)
    Product.objects.create(name="New", price=1, category=category)
    assert tagged_cache.get("arc-name") == "Arc"


def test_querysets_are_invalidated_by_creates_and_deletes(lamps):
    category, arc = lamps

    def names():
        return sorted(category.products.values_list("name", flat=True))

    assert tagged_cache.get_or_set("names", names) == ["Arc", "Bow"]
    Product.objects.create(name="Cone", price=5, category=category)
    assert tagged_cache.get("names") is None
    assert tagged_cache.get_or_set("names", names) == ["Arc", "Bow", "Cone"]
    arc.delete()
    assert tagged_cache.get_or_set("names", names) == ["Bow", "Cone"]


def test_aggregates_and_counts_are_captured(lamps):
    category, arc = lamps
    with capturing() as found:
        Product.objects.aggregate(Max("price"))
        Product.objects.filter(category=category).count()
        Product.objects.filter(price__gt=100).exists()
    assert found == {"shop.Product:*", f"shop.Product:category_id={category.pk}"}
    top = tagged_cache.get_or_set("top", lambda: Product.objects.aggregate(m=Max("price"))["m"])
    assert top == Decimal("20")
    arc.price = Decimal("99")
    arc.save()
    assert tagged_cache.get_or_set(
        "top", lambda: Product.objects.aggregate(m=Max("price"))["m"]
    ) == Decimal("99")


def test_joined_declared_models_are_captured(lamps):
    with capturing() as found:
        list(Review.objects.filter(product__category__slug="lamps"))
    assert found == {"shop.Review:*", "shop.Product:*", "shop.Category:*"}


def test_select_related_tags_the_instances_and_the_joined_table(lamps):
    category, arc = lamps
    with capturing() as found:
        Product.objects.select_related("category").get(pk=arc.pk)
    # The product by key; the joined table as a whole (the compiler's join is read too).
    assert found == {f"shop.Product:{arc.pk}", "shop.Category:*"}


def test_missing_key_lookup_is_invalidated_when_that_key_is_created():
    with capturing() as found:
        assert not Book.objects.filter(pk=4242).exists()
    assert found == {"testapp.Book:4242"}
    assert tagged_cache.get_or_set("book", lambda: Book.objects.filter(pk=4242).exists()) is False
    Book.objects.create(pk=4242, title="late")
    assert tagged_cache.get("book") is None


def test_capture_can_be_turned_off(lamps):
    _, arc = lamps
    tagged_cache.get_or_set("raw", lambda: Product.objects.get(pk=arc.pk).name, capture=False)
    arc.name = "changed"
    arc.save()
    assert tagged_cache.get("raw") == "Arc"


def test_nested_captures_propagate_outwards(lamps):
    _, arc = lamps

    @cached(timeout=60)
    def product_name(pk):
        return Product.objects.get(pk=pk).name

    with capturing() as outer:
        tagged_cache.get_or_set("page", lambda: product_name(arc.pk) + "!", tags=["page"])
    assert f"shop.Product:{arc.pk}" in outer
    arc.name = "Renamed"
    arc.save()
    assert tagged_cache.get("page") is None


def test_multi_table_rows_carry_parent_tags():
    with no_invalidation():
        ebook = Ebook.objects.create(title="e", shelf=1)
    value = tagged_cache.get_or_set("ebook", lambda: Ebook.objects.get(pk=ebook.pk).title)
    assert value == "e"
    parent = Book.objects.get(pk=ebook.pk)  # saved through the parent model
    parent.title = "E"
    parent.save()
    assert tagged_cache.get("ebook") is None


@pytest.mark.parametrize("alias", ["default", "locmem"])
def test_an_outer_entry_depends_on_an_inner_entrys_tags_on_hit_and_miss(lamps, alias, settings):
    """A page that embeds a cached fragment must go when the fragment's tags do, whether the
    fragment was computed during the page's computation or found in the cache."""
    from cache_invalidation import TaggedCache

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": alias}
    cache = TaggedCache(alias)
    _, arc = lamps

    def fragment():
        return cache.get_or_set("fragment", lambda: Product.objects.get(pk=arc.pk).name,
                                tags=["fragment-tag"])

    fragment()  # the fragment is cached first: the page will see a hit
    assert cache.get_or_set("page", lambda: "<" + fragment() + ">") == "<Arc>"
    cache.invalidate_tags(["fragment-tag"])  # the fragment's explicit tag
    assert cache.get("page") is None
    assert cache.get_or_set("page", lambda: "<" + fragment() + ">") == "<Arc>"  # a miss inside
    arc.name = "Arc 2"
    arc.save()  # the fragment's captured dependency
    assert cache.get("page") is None
