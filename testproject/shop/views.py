"""The shop's pages. Each caches what it renders through ``tagged_cache``, under the tags the
models declare, and reports where each part came from, in ``X-Cache`` response headers and in
the page footer: ``hit-local`` (this process's local copy, when ``LOCAL_CACHE`` is on),
``hit`` (Redis, or the LocMem cache) or ``miss`` (computed).

``get_or_set`` reads the tags' versions before computing, so a page computed from rows that
change meanwhile is returned to this request but not stored.

The other surfaces are shown too: the reviews list on the product page is a
``{% cachetagged %}`` fragment, the home page is cached whole by ``cache_page_tagged``, and
``/api/products/<pk>/`` is an async view using ``tagged_cache.aget_or_set``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django.db.models import Avg, Count, Max, Min
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from cache_invalidation import cache_page_tagged, tagged_cache
from cache_invalidation.localcache import served_locally

from .models import Category, Product, Review


def cached_part(key: str, compute: Callable[[], Any], tags: Sequence[str]) -> tuple[Any, str]:
    """``tagged_cache.get_or_set`` that also says where the value came from: "hit-local",
    "hit" or "miss"."""
    computed = False

    def compute_and_note() -> Any:
        nonlocal computed
        computed = True
        return compute()

    value = tagged_cache.get_or_set(key, compute_and_note, tags=list(tags))
    return value, source(computed)


def source(computed: bool) -> str:
    """What the X-Cache headers report for the get_or_set that just returned."""
    if computed:
        return "miss"
    # Only set by a get_or_set that used the local cache (LOCAL_CACHE on): False otherwise.
    return "hit-local" if served_locally() else "hit"


def product_data(pk: int) -> dict[str, Any]:
    """What the product page shows, as plain data. Raises Http404 (nothing is cached)."""
    product = get_object_or_404(Product.objects.select_related("category"), pk=pk)
    reviews = product.reviews.aggregate(count=Count("pk"), average=Avg("rating"))
    return {
        "pk": product.pk,
        "name": product.name,
        "price": product.price,
        "description": product.description,
        "category_id": product.category_id,
        "category_name": product.category.name,
        "tags": [tag.name for tag in product.tags.all()],
        "review_count": reviews["count"],
        "review_average": (
            round(reviews["average"], 1) if reviews["average"] is not None else None
        ),
    }


def pricing_data(category_id: int) -> dict[str, Any]:
    """Price range of a category, for the side box of the product page."""
    summary = Product.objects.filter(category_id=category_id).aggregate(
        count=Count("pk"), low=Min("price"), high=Max("price"), average=Avg("price")
    )
    if summary["average"] is not None:
        summary["average"] = Decimal(summary["average"]).quantize(Decimal("0.01"))
    return summary


def category_data(pk: int) -> dict[str, Any]:
    """What the category page shows. Raises Http404 (nothing is cached)."""
    category = get_object_or_404(Category, pk=pk)
    return {
        "pk": category.pk,
        "name": category.name,
        "products": list(category.products.order_by("name").values("pk", "name", "price")),
    }


def product_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # Everything on this page that belongs to the product (its row, its tags, its reviews)
    # invalidates "product:{pk}". Renaming its category or one of its tags does not: that
    # text refreshes within MAX_TTL.
    product, status = cached_part(f"product:{pk}:page", lambda: product_data(pk), [f"product:{pk}"])
    category_id = product["category_id"]
    # A price change invalidates "pricing:{category_id}" (the on_fields rule); a product moving
    # in or out of the category changes the range too, which "category:{id}:products" covers.
    pricing, pricing_status = cached_part(
        f"pricing:{category_id}:box",
        lambda: pricing_data(category_id),
        [f"pricing:{category_id}", f"category:{category_id}:products"],
    )
    response = render(
        request,
        "shop/product_detail.html",
        {
            "product": product,
            "pricing": pricing,
            # Lazy: evaluated only when the template's {% cachetagged %} fragment misses.
            "reviews": Review.objects.filter(product_id=pk),
            "cache_parts": [("product", status), ("pricing box", pricing_status)],
        },
    )
    response["X-Cache"] = status
    response["X-Cache-Pricing"] = pricing_status
    return response


def category_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # The declared key "category:{pk}:listing" is deleted on any change of the category row;
    # the tags also catch products added, removed, moved, renamed or repriced.
    category, status = cached_part(
        f"category:{pk}:listing",
        lambda: category_data(pk),
        [f"category:{pk}", f"category:{pk}:products"],
    )
    response = render(
        request,
        "shop/category_detail.html",
        {"category": category, "cache_parts": [("category listing", status)]},
    )
    response["X-Cache"] = status
    return response


# The page lists every category and its products, so any change to either table refreshes it:
# these are the automatic collection tags that saves of declared models invalidate. (Capture
# would add them anyway, as the view reads both tables; naming them keeps the page correct
# whatever the template happens to read.)
@cache_page_tagged(tags=["shop.Category:*", "shop.Product:*"])
def home(request: HttpRequest) -> HttpResponse:
    """Categories and their products, cached whole."""
    categories = Category.objects.prefetch_related("products")
    return render(request, "shop/home.html", {"categories": categories})


async def product_api(request: HttpRequest, pk: int) -> JsonResponse:
    """The product as JSON, from an async view: ``aget_or_set`` with an async ORM query.

    ``X-Cache`` says "hit-local", "hit" or "miss". A missing product raises Http404 inside the
    computation, so nothing is cached for it. As on the product page, the category's name
    refreshes on a change of the product, or within MAX_TTL.
    """
    computed = False

    async def load() -> dict[str, Any]:
        nonlocal computed
        computed = True
        try:
            product = await Product.objects.select_related("category").aget(pk=pk)
        except Product.DoesNotExist:
            raise Http404(f"No product {pk}") from None
        return {
            "pk": product.pk,
            "name": product.name,
            "price": str(product.price),
            "category": {"pk": product.category_id, "name": product.category.name},
        }

    data = await tagged_cache.aget_or_set(f"product:{pk}:api", load, tags=[f"product:{pk}"])
    response = JsonResponse(data)
    response["X-Cache"] = source(computed)
    return response
