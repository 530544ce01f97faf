"""The demo shop's cached pages change as soon as a write commits (sync and celery)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cache_invalidation import no_invalidation
from testproject.shop.models import Category, Product, Review, Tag
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lamp():
    with no_invalidation():
        lamps = Category.objects.create(name="Lamps", slug="lamps")
        chairs = Category.objects.create(name="Chairs", slug="chairs")
        product = Product.objects.create(name="Arc", price=Decimal("89.00"), category=lamps)
    return lamps, chairs, product


def get(client, url):
    response = client.get(url)
    assert response.status_code == 200
    return response


def test_product_page_is_cached_then_refreshed_by_a_price_change(client, lamp):
    _, _, product = lamp
    url = f"/products/{product.pk}/"
    assert get(client, url)["X-Cache"] == "miss"
    assert get(client, url)["X-Cache"] == "hit"
    product.price = Decimal("94.00")
    product.save()
    response = get(client, url)
    assert response["X-Cache"] == "miss" and response["X-Cache-Pricing"] == "miss"
    assert "94.00" in response.content.decode()


def test_review_and_tag_changes_refresh_the_product_page(client, lamp):
    _, _, product = lamp
    url = f"/products/{product.pk}/"
    get(client, url)
    Review.objects.create(product=product, rating=5, text="bright")
    assert get(client, url)["X-Cache"] == "miss"
    with no_invalidation():
        tag = Tag.objects.create(name="brass")
    assert get(client, url)["X-Cache"] == "hit"
    tag.products.add(product)  # from the tag's side
    response = get(client, url)
    assert response["X-Cache"] == "miss" and "brass" in response.content.decode()


def test_moving_a_product_refreshes_both_category_pages(client, lamp):
    lamps, chairs, product = lamp
    for category in (lamps, chairs):
        get(client, f"/categories/{category.pk}/")
        assert get(client, f"/categories/{category.pk}/")["X-Cache"] == "hit"
    product.category = chairs
    product.save()
    old = get(client, f"/categories/{lamps.pk}/")
    new = get(client, f"/categories/{chairs.pk}/")
    assert old["X-Cache"] == new["X-Cache"] == "miss"
    assert "Arc" not in old.content.decode() and "Arc" in new.content.decode()


@pytest.mark.celery
def test_the_same_through_celery(client, lamp, settings, celery_worker):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    _, _, product = lamp
    url = f"/products/{product.pk}/"
    get(client, url)
    product.name = "Arc II"
    product.save()
    assert wait_for(lambda: "Arc II" in get(client, url).content.decode())
