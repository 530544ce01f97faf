"""Capture of foreign-key filters: ``Review.objects.filter(product_id=5)`` depends on the
reviews of product 5 only (tag ``"shop.Review:product_id=5"``), not on every review.

Each invalidation test first makes a write that must NOT reach the value (a review of another
product), then the one that must: with the collection tag alone the first write would already
have dropped it.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import models
from django.db.models import Avg, Count, Exists, OuterRef, Q

from cache_invalidation import no_invalidation, tagged_cache
from cache_invalidation.capture import MAX_IN_VALUES, capturing
from cache_invalidation.resolve import key_text
from testproject.shop.models import Category, Product, Review, Tag
from tests.testapp.models import Episode, Gadget, Series

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shop():
    """Two products with one review each: (p1, p2, review of p1, review of p2)."""
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        p1 = Product.objects.create(name="Arc", price=Decimal("10"), category=category)
        p2 = Product.objects.create(name="Bow", price=Decimal("20"), category=category)
        r1 = Review.objects.create(product=p1, rating=4, text="good")
        r2 = Review.objects.create(product=p2, rating=2, text="meh")
    return p1, p2, r1, r2


def stats(product):
    """The product page's review statistics: an aggregate, so no instance is loaded."""
    return tagged_cache.get_or_set(
        "stats",
        lambda: Review.objects.filter(product_id=product.pk).aggregate(
            n=Count("pk"), avg=Avg("rating")
        ),
    )


def tags_of(queryset):
    """What evaluating ``queryset`` records (as values: loading instances adds their tags)."""
    with capturing() as found:
        list(queryset.values_list("pk", flat=True))
    return found


# -- what is recorded ---------------------------------------------------------------------------
def test_foreign_key_filters_record_the_value_tag(shop):
    p1, p2, _, _ = shop
    tag = f"shop.Review:product_id={p1.pk}"
    for queryset in (
        Review.objects.filter(product_id=p1.pk),
        Review.objects.filter(product=p1),
        Review.objects.filter(product=str(p1.pk)),
        Review.objects.filter(product__pk=p1.pk),
        Review.objects.filter(product__id=str(p1.pk)),
        Review.objects.filter(product_id=p1.pk, rating__gte=3).exclude(text=""),
        Review.objects.filter(product_id=p1.pk).order_by("rating")[:1],
        p1.reviews.all(),
    ):
        assert tags_of(queryset) == {tag}, queryset.query
    with capturing() as found:
        Review.objects.filter(product_id=p1.pk).aggregate(Avg("rating"))
        Review.objects.filter(product=p1).count()
        Review.objects.filter(product=p1).exists()
    assert found == {tag}


def test_in_records_one_tag_per_value_up_to_a_limit(shop):
    p1, p2, _, _ = shop
    assert tags_of(Review.objects.filter(product__in=[p1, p2.pk, None])) == {
        f"shop.Review:product_id={p1.pk}",
        f"shop.Review:product_id={p2.pk}",
    }
    many = list(range(1, MAX_IN_VALUES + 2))
    assert tags_of(Review.objects.filter(product__in=many)) == {"shop.Review:*"}


def test_of_several_conditions_the_narrowest_is_taken(shop):
    p1, p2, _, _ = shop
    queryset = Review.objects.filter(product__in=[p1, p2], rating=4).filter(product=p2)
    assert tags_of(queryset) == {f"shop.Review:product_id={p2.pk}"}


def test_joined_models_keep_their_collection_tags(shop):
    p1, _, _, _ = shop
    assert tags_of(Review.objects.filter(product_id=p1.pk, product__name="Arc")) == {
        f"shop.Review:product_id={p1.pk}",
        "shop.Product:*",
    }
    # A filter on a joined model's foreign key narrows nothing.
    assert tags_of(Review.objects.filter(product__category_id=p1.category_id)) == {
        "shop.Review:*",
        "shop.Product:*",
    }


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda p: Review.objects.filter(Q(product_id=p.pk) | Q(rating=5)), id="or"),
        pytest.param(lambda p: Review.objects.exclude(product_id=p.pk), id="exclude"),
        pytest.param(lambda p: Review.objects.filter(~Q(product_id=p.pk)), id="negated"),
        pytest.param(
            lambda p: Review.objects.filter(product_id=p.pk).filter(
                Exists(Review.objects.filter(product_id=OuterRef("product_id"), rating=1))
            ),
            id="subquery",
        ),
        pytest.param(
            lambda p: Review.objects.filter(product_id=p.pk).extra(where=["1 = 1"]), id="extra"
        ),
        pytest.param(
            lambda p: Review.objects.filter(product__in=Product.objects.filter(pk=p.pk)),
            id="in-subquery",
        ),
        pytest.param(
            lambda p: Review.objects.filter(product_id=p.pk)
            .order_by()
            .union(Review.objects.filter(rating=5).order_by()),
            id="union",
        ),
    ],
)
def test_what_cannot_be_analysed_keeps_the_collection_tag(shop, build):
    p1, _, _, _ = shop
    assert tags_of(Review.objects.filter(product_id=p1.pk)) == {f"shop.Review:product_id={p1.pk}"}
    assert "shop.Review:*" in tags_of(build(p1))
    assert not any("product_id=" in t for t in tags_of(build(p1)))


def test_a_self_join_keeps_the_collection_tag(shop):
    p1, _, _, _ = shop
    assert tags_of(Review.objects.filter(product_id=p1.pk)) == {f"shop.Review:product_id={p1.pk}"}
    # Reviews of p1 whose product has another review rated 2: other reviews matter.
    queryset = Review.objects.filter(product_id=p1.pk, product__reviews__rating=2)
    assert tags_of(queryset) == {"shop.Review:*", "shop.Product:*"}


def test_an_or_query_is_invalidated_by_any_review(shop):
    p1, p2, _, _ = shop

    def page():
        return tagged_cache.get_or_set(
            "or", lambda: Review.objects.filter(Q(product_id=p1.pk) | Q(rating=5)).count()
        )

    narrowed = tagged_cache.get_or_set("narrow", lambda: stats(p1))
    assert page() == 1
    Review.objects.create(product=p2, rating=5, text="great")  # matches the OR, not product 1
    assert tagged_cache.get("or") is None
    assert tagged_cache.get("narrow") == narrowed


# -- what invalidates -----------------------------------------------------------------------------
def _unrelated_writes(p2, r2):
    """Writes that touch reviews of p2 only: none may drop p1's statistics."""
    Review.objects.create(product=p2, rating=5, text="new")
    r2.rating = 1
    r2.save()
    Review.objects.filter(product=p2).update(rating=3)
    Review.objects.bulk_create([Review(product=p2, rating=4, text="bulk")])
    Review.objects.filter(product=p2, text="bulk").delete()


def test_writes_of_other_products_reviews_keep_the_value(shop):
    p1, p2, _, r2 = shop
    assert stats(p1) == {"n": 1, "avg": 4.0}
    _unrelated_writes(p2, r2)
    assert tagged_cache.get("stats") == {"n": 1, "avg": 4.0}


def _create(p1, p2, r1, r2):
    Review.objects.create(product=p1, rating=1, text="bad")


def _create_with_a_text_key(p1, p2, r1, r2):
    Review.objects.create(product_id=str(p1.pk), rating=1, text="bad")


def _update(p1, p2, r1, r2):
    r1.rating = 5
    r1.save()


def _update_some_fields(p1, p2, r1, r2):
    r1.rating = 5
    r1.save(update_fields=["rating"])


def _update_deferred(p1, p2, r1, r2):
    review = Review.objects.only("text").get(pk=r1.pk)
    review.text = "changed"
    review.save()


def _move_away(p1, p2, r1, r2):
    r1.product = p2
    r1.save()


def _move_in(p1, p2, r1, r2):
    r2.product = p1
    r2.save()


def _move_in_with_update_fields(p1, p2, r1, r2):
    r2.product_id = p1.pk
    r2.save(update_fields=["product"])


def _delete(p1, p2, r1, r2):
    r1.delete()


def _delete_deferred(p1, p2, r1, r2):
    Review.objects.only("rating").get(pk=r1.pk).delete()


def _queryset_update(p1, p2, r1, r2):
    Review.objects.filter(product=p1).update(rating=1)


def _queryset_update_moving_in(p1, p2, r1, r2):
    Review.objects.filter(pk=r2.pk).update(product=p1)


def _queryset_update_moving_away(p1, p2, r1, r2):
    Review.objects.filter(pk=r1.pk).update(product=p2)


def _queryset_update_of_the_key_and_product(p1, p2, r1, r2):
    # New keys: the new states are not read; their foreign keys are not known either.
    Review.objects.filter(pk=r2.pk).update(id=r2.pk + 1000, product=p1)


def _queryset_delete(p1, p2, r1, r2):
    Review.objects.filter(product=p1).delete()


def _cascade(p1, p2, r1, r2):
    p1.delete()


def _bulk_create(p1, p2, r1, r2):
    Review.objects.bulk_create([Review(product=p1, rating=1, text="bulk")])


def _bulk_update_moving_in(p1, p2, r1, r2):
    r2.product = p1
    Review.objects.bulk_update([r2], ["product"])


@pytest.mark.parametrize(
    "write",
    [
        _create,
        _create_with_a_text_key,
        _update,
        _update_some_fields,
        _update_deferred,
        _move_away,
        _move_in,
        _move_in_with_update_fields,
        _delete,
        _delete_deferred,
        _queryset_update,
        _queryset_update_moving_in,
        _queryset_update_moving_away,
        _queryset_update_of_the_key_and_product,
        _queryset_delete,
        _cascade,
        _bulk_create,
        _bulk_update_moving_in,
    ],
)
def test_writes_of_the_products_reviews_invalidate(shop, write):
    p1, p2, r1, r2 = shop
    assert stats(p1) == {"n": 1, "avg": 4.0}
    _unrelated_writes(p2, r2)
    assert tagged_cache.get("stats") is not None
    r2.refresh_from_db()
    write(p1, p2, r1, r2)
    assert tagged_cache.get("stats") is None
    # And what is computed again is right.
    expected = Review.objects.filter(product_id=p1.pk).aggregate(n=Count("pk"), avg=Avg("rating"))
    assert stats(p1) == expected


def test_a_string_key_filter_is_invalidated_by_an_integer_key_write(shop):
    p1, p2, _, r2 = shop
    value = tagged_cache.get_or_set(
        "by-text", lambda: Review.objects.filter(product=str(p1.pk)).count()
    )
    assert value == 1
    _unrelated_writes(p2, r2)
    assert tagged_cache.get("by-text") == 1
    Review.objects.create(product_id=p1.pk, rating=3, text="int key")
    assert tagged_cache.get("by-text") is None


def test_a_related_manager_is_invalidated_by_its_rows_only(shop):
    p1, p2, _, r2 = shop
    names = tagged_cache.get_or_set("texts", lambda: list(p1.reviews.values_list("text", flat=True)))
    assert names == ["good"]
    _unrelated_writes(p2, r2)
    assert tagged_cache.get("texts") == ["good"]
    Review.objects.create(product=p1, rating=3, text="second")
    assert tagged_cache.get("texts") is None


def test_an_m2m_change_reaches_a_foreign_key_filter_that_joins_the_relation(shop):
    """The through table is undeclared: the product's own event must carry its key tags."""
    p1, p2, _, _ = shop
    with no_invalidation():
        tag = Tag.objects.create(name="red")

    def red():
        return tagged_cache.get_or_set(
            "red",
            lambda: list(
                Product.objects.filter(category_id=p1.category_id, tags__name="red").values_list(
                    "name", flat=True
                )
            ),
        )

    assert red() == []
    with no_invalidation():
        elsewhere = Category.objects.create(name="Desks", slug="desks")
    Product.objects.create(name="Cot", price=Decimal("1"), category=elsewhere)
    assert tagged_cache.get("red") == []  # another category's product
    p1.tags.add(tag)
    assert tagged_cache.get("red") is None
    assert red() == ["Arc"]


# -- events ---------------------------------------------------------------------------------------
def test_events_carry_the_old_and_new_foreign_key_tags(shop, recorder):
    p1, p2, r1, _ = shop
    r1.product = p2
    r1.save()
    [event] = recorder.events
    assert {f"shop.Review:product_id={p1.pk}", f"shop.Review:product_id={p2.pk}"} <= set(
        event.tags
    )
    assert event.changed_fields == ("product",)  # declared: "product:{product_id}"


def test_foreign_keys_tracked_only_for_capture_are_no_changed_fields(recorder):
    with no_invalidation():
        one = Series.objects.create(name="one")
        two = Series.objects.create(name="two")
        episode = Episode.objects.create(series=one, title="pilot")
    episode.series = two
    episode.save()
    [event] = [e for e in recorder.events if e.entity_type == "testapp.Episode"]
    assert event.changed_fields == ()
    assert {f"testapp.Episode:series_id={one.pk}", f"testapp.Episode:series_id={two.pk}"} <= set(
        event.tags
    )


def test_a_null_foreign_key_yields_no_tag():
    from cache_invalidation.registry import registry
    from cache_invalidation.resolve import resolve

    policy = registry.get(Episode)
    tags, _ = resolve(policy, None, {"id": 1, "series_id": None}, None)
    assert tags == ("episode:1", "testapp.Episode:1", "testapp.Episode:*")
    tags, _ = resolve(policy, None, {"id": 1}, None)  # not known: the coarse tag instead
    assert tags == ("episode:1", "testapp.Episode:1", "testapp.Episode:*", "testapp.Episode:#")


def test_key_values_are_spelled_alike_on_both_sides():
    """Capture renders a filter's prepared value, writes the stored or assigned one."""
    by_uuid = models.ForeignKey(Gadget, on_delete=models.CASCADE)
    key = uuid.uuid4()
    prepared = by_uuid.target_field.get_prep_value(key.hex)
    assert {key_text(by_uuid, v) for v in (key, str(key), key.hex, prepared)} == {str(key)}
    by_int = Review._meta.get_field("product")
    assert {key_text(by_int, v) for v in (5, "5", by_int.target_field.get_prep_value("5"))} == {
        "5"
    }
    by_text = models.ForeignKey(Tag, on_delete=models.CASCADE, to_field="name")
    assert key_text(by_text, "red") == "red"
    assert key_text(by_int, None) is None


# -- storm control --------------------------------------------------------------------------------
def test_an_escalated_event_still_reaches_foreign_key_tags(shop, settings):
    p1, p2, _, r2 = shop
    assert stats(p1) == {"n": 1, "avg": 4.0}
    assert tags_of(Review.objects.filter(product_id=p1.pk)) == {f"shop.Review:product_id={p1.pk}"}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 2}
    Review.objects.create(product=p1, rating=1, text="escalated")  # more than 2 tags
    assert tagged_cache.get("stats") is None  # through "shop.Review:#"
