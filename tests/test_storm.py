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
from tests.faults import row

pytestmark = pytest.mark.django_db(transaction=True)


def test_entries_carry_the_coarse_tags_of_the_models_their_tags_come_from():
    assert coarse_tags_for(["category:3:products"]) == ["shop.Product:#"]
    assert coarse_tags_for(["product:7"]) == ["shop.Product:#", "shop.Review:#"]
    assert coarse_tags_for(["shop.Category:4"]) == ["shop.Category:#"]
    assert coarse_tags_for(["unrelated"]) == []


def test_an_event_with_too_many_tags_is_escalated(settings, caplog):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 2}
    with no_invalidation():
        category = Category.objects.create(name="c", slug="c")
        product = Product.objects.create(name="p", price=Decimal(1), category=category)
    tagged_cache.set("page", "x", tags=[f"product:{product.pk}"])
    tagged_cache.set("other", "y", tags=["unrelated"])
    before = metrics.read()["escalated"]
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        product.save()  # more tags than the cap
    assert tagged_cache.get("page") is None  # reached through the coarse tag
    assert tagged_cache.get("other") == "y"
    assert metrics.read()["escalated"] == before + 1
    [record] = [r for r in caplog.records if "escalated" in r.getMessage()]
    assert record.getMessage().endswith(
        "(shop.Product.updated) to ['shop.Product:#']: 5 tags exceed MAX_TAGS_PER_EVENT (2)"
    )


@row("A manual invalidation of more tags than MAX_TAGS_PER_EVENT, most matching no declared "
     "template",
     "invalidate(tags=[1,001 promo:<n> tags, 'product:7']) and 1,001 --tag options to manage.py "
     "invalidate_cache, with MAX_TAGS_PER_EVENT 100, entries cached under promo:0, promo:1000 "
     "and product:7",
     "never escalated: every named entry is gone (applied in script calls of at most 250 "
     "tags), nothing logs 'escalated', the escalated counter stays; a bystander stays")
def test_a_manual_event_is_never_escalated(settings, caplog):
    from django.core.management import call_command

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 100}
    promos = [f"promo:{i}" for i in range(1001)]
    for round_ in ("api", "command"):
        tagged_cache.set("promo-first", "x", tags=["promo:0"])
        tagged_cache.set("promo-last", "x", tags=["promo:1000"])
        tagged_cache.set("page-7", "x", tags=["product:7"])
        tagged_cache.set("bystander", "y", tags=["product:8"])
        before = metrics.read()["escalated"]
        with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
            if round_ == "api":
                invalidate(tags=[*promos, "product:7"])
            else:
                call_command("invalidate_cache", *[f"--tag={t}" for t in [*promos, "product:7"]],
                             "--no-input", verbosity=0)
        assert tagged_cache.get("promo-first") is None, round_
        assert tagged_cache.get("promo-last") is None, round_
        assert tagged_cache.get("page-7") is None, round_
        assert tagged_cache.get("bystander") == "y", round_
        assert metrics.read()["escalated"] == before, round_
        assert not any("escalated" in r.getMessage() for r in caplog.records), round_


def test_an_escalated_event_without_a_known_model_applies_its_tags_precisely(settings):
    """A foreign event (no entity type) whose tags no declared template produced: escalating
    it to no coarse tag at all would invalidate nothing."""
    from cache_invalidation.apply import apply_events

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TAGS_PER_EVENT": 10}
    tagged_cache.set("promo", "x", tags=["promo:3"])
    tagged_cache.set("page-7", "x", tags=["product:7"])
    tags = (*(f"promo:{i}" for i in range(20)), "product:7")
    apply_events([InvalidationEvent(type="imported", tags=tags)])
    assert tagged_cache.get("promo") is None
    assert tagged_cache.get("page-7") is None


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
