"""Storm control: too many tags, or too many events of one model, escalate to a coarse tag."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from django.db import transaction

from cache_invalidation import invalidate, metrics, no_invalidation, storm, tagged_cache
from cache_invalidation.backends import backend_for
from cache_invalidation.bookkeeping import Bookkeeping
from cache_invalidation.events import InvalidationEvent
from cache_invalidation.storm import coarse_tags_for
from testproject.shop.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)


def test_entries_carry_the_coarse_tags_of_the_models_their_tags_come_from():
    assert coarse_tags_for(["category:3:products"]) == ["shop.Product:#"]
    assert coarse_tags_for(["product:7"]) == ["shop.Product:#", "shop.Review:#"]
    assert coarse_tags_for(["shop.Category:4"]) == ["shop.Category:#"]
    assert coarse_tags_for(["unrelated"]) == []


def test_an_event_with_too_many_tags_is_escalated(settings, caplog):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 100}
    tagged_cache.set("page-7", "x", tags=["product:7"])
    tagged_cache.set("other", "y", tags=["unrelated"])
    before = metrics.read()["escalated"]
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        event = invalidate(tags=[f"product:{i}" for i in range(1, 501)])
    assert tagged_cache.get("page-7") is None  # reached through the coarse tag
    assert tagged_cache.get("other") == "y"
    assert metrics.read()["escalated"] == before + 1
    [record] = [r for r in caplog.records if "escalated" in r.getMessage()]
    assert record.getMessage() == (
        f"cache_invalidation: escalated event {event.id} (manual) to "
        "['shop.Product:#', 'shop.Review:#']: 500 tags exceed MAX_TAGS_PER_EVENT (100)"
    )


def test_a_model_over_its_rate_limit_is_escalated(settings, caplog):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MODEL_RATE_LIMIT": 3,
                                   "RATE_LIMIT_WINDOW": 60}
    with no_invalidation():
        category = Category.objects.create(name="c", slug="c")
        products = [Product.objects.create(name=str(i), price=Decimal(1), category=category)
                    for i in range(6)]
    bystander = products[5]
    tagged_cache.set("bystander", "x", tags=[f"product:{bystander.pk}"])
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        for product in products[:4]:
            product.save()
        # The fourth event crossed the limit: it is applied precisely (the shared count comes
        # back with its own invalidation), and this process now knows the model is over.
        assert tagged_cache.get("bystander") == "x"
        assert not any("MODEL_RATE_LIMIT" in r.getMessage() for r in caplog.records)
        products[4].save()  # the fifth event in the window
    assert tagged_cache.get("bystander") is None  # escalated: the whole model's entries
    assert any("shop.Product is over MODEL_RATE_LIMIT" in r.getMessage() for r in caplog.records)


def test_a_batch_over_the_rate_limit_on_its_own_is_escalated_at_once(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MODEL_RATE_LIMIT": 3,
                                   "RATE_LIMIT_WINDOW": 61}  # a count of its own
    with no_invalidation():
        category = Category.objects.create(name="c", slug="c")
        products = [Product.objects.create(name=str(i), price=Decimal(1), category=category)
                    for i in range(5)]
    tagged_cache.set("bystander", "x", tags=[f"product:{products[4].pk}"])
    with transaction.atomic():  # one batch of four events
        for product in products[:4]:
            product.save()
    assert tagged_cache.get("bystander") is None


def test_the_rate_count_is_shared_across_processes(settings):
    """Another process's events count: after them, this process's next batch learns the model
    is over (from its own invalidation's reply) and the one after escalates."""
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MODEL_RATE_LIMIT": 3,
                                   "RATE_LIMIT_WINDOW": 62}
    with no_invalidation():
        category = Category.objects.create(name="c", slug="c")
        products = [Product.objects.create(name=str(i), price=Decimal(1), category=category)
                    for i in range(3)]
    # Three events of another process, through the shared counter only.
    book = Bookkeeping()
    storm.control([InvalidationEvent(type="updated", entity_type="shop.Product",
                                     entity_id=str(i), tags=("x",)) for i in range(3)], book)
    backend_for("default").write_bookkeeping(book)
    storm.forget_rates()  # this process knows nothing of it
    tagged_cache.set("bystander", "x", tags=[f"product:{products[2].pk}"])
    products[0].save()  # the fourth event in the window: precise, and learns
    assert tagged_cache.get("bystander") == "x"
    products[1].save()
    assert tagged_cache.get("bystander") is None


def test_limits_can_be_turned_off(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MODEL_RATE_LIMIT": 0}
    tagged_cache.set("bystander", "x", tags=["product:999"])
    for i in range(5):
        invalidate(tags=[f"product:{i}"])
    assert tagged_cache.get("bystander") == "x"


def test_an_escalated_child_event_reaches_its_parents_entries(settings):
    """A multi-table child's row is a parent row too: escalating the child's event must drop
    what the parent's tags and querysets cached, through the parent's coarse tag."""
    from tests.testapp.models import Book, Ebook

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 1}
    with no_invalidation():
        ebook = Ebook.objects.create(title="T", shelf=4)
    # Only what capture saw: the parent's queryset ("testapp.Book:*").
    tagged_cache.get_or_set("shelf-page", lambda: list(Book.objects.filter(shelf=4)))
    assert tagged_cache.get("shelf-page") is not None
    ebook.title = "T2"
    ebook.save()  # more tags than the cap: escalated
    assert tagged_cache.get("shelf-page") is None
