"""The rendering surfaces: ``{% cachetagged %}``, ``cache_page_tagged`` (sync and async views),
``@cached`` on coroutine functions, and the shop's async API view.

Async code is driven with ``asgiref.sync.async_to_sync``, as Django itself runs it: thread-
sensitive ORM calls made from the event loop land on the test's own thread, so they use the
test's database connection. No pytest-asyncio needed.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import caches
from django.template import Context, Template, TemplateSyntaxError
from django.test import Client

from cache_invalidation import TaggedCache, cache_page_tagged, cached, no_invalidation
from cache_invalidation.cachekeys import fragment_key
from testproject.shop.models import Category, Product, Review
from tests import surfaces_urls
from tests.faults import row

# --- {% cachetagged %} -------------------------------------------------------------------


@pytest.fixture(params=["default", "locmem"])
def alias(request: Any) -> str:
    return str(request.param)


def render(source: str, alias: str = "default", **context: Any) -> str:
    using = "" if alias == "default" else f' using="{alias}"'
    source = source.replace("%}", f"{using} %}}", 1) if "{% cachetagged" in source else source
    return Template("{% load cache_invalidation %}" + source).render(Context(context)).strip()


def test_fragment_is_rendered_once_then_served_until_its_tag_is_invalidated(alias):
    tick = itertools.count(1).__next__
    source = '{% cachetagged 60 box tags="product:1" %}render {{ tick }}{% endcachetagged %}'
    assert render(source, alias, tick=tick) == "render 1"
    assert render(source, alias, tick=tick) == "render 1"
    TaggedCache(alias).invalidate_tags(["product:2"])
    assert render(source, alias, tick=tick) == "render 1"
    TaggedCache(alias).invalidate_tags(["product:1"])
    assert render(source, alias, tick=tick) == "render 2"


def test_vary_on_values_get_their_own_entries(alias):
    tick = itertools.count(1).__next__
    source = '{% cachetagged 60 box pk lang tags="box" %}{{ tick }}{% endcachetagged %}'
    assert render(source, alias, tick=tick, pk=1, lang="en") == "1"
    assert render(source, alias, tick=tick, pk=2, lang="en") == "2"
    assert render(source, alias, tick=tick, pk=1, lang="fr") == "3"
    assert render(source, alias, tick=tick, pk=1, lang="en") == "1"
    assert TaggedCache(alias).get(fragment_key("box", [2, "en"])) == "2"


def test_tags_from_literals_lists_filters_and_several_keywords(alias):
    tick = itertools.count(1).__next__
    source = (
        '{% cachetagged None box tags="catalogue, prices" tags=extra '
        'tags="product"|tag:product.pk|tag:"reviews" %}{{ tick }}{% endcachetagged %}'
    )
    context = {"tick": tick, "extra": ["a", "b"], "product": {"pk": 7}}
    tc = TaggedCache(alias)
    expected = 1
    for tag in ["catalogue", "prices", "a", "b", "product:7:reviews"]:
        assert render(source, alias, **context) == str(expected)
        assert render(source, alias, **context) == str(expected)
        tc.invalidate_tags([tag])
        expected += 1
    assert render(source, alias, **context) == str(expected)


def test_a_string_variable_is_one_tag_never_split_on_commas(alias):
    tick = itertools.count(1).__next__
    source = "{% cachetagged 60 box tags=name %}{{ tick }}{% endcachetagged %}"
    assert render(source, alias, tick=tick, name="a,b") == "1"
    TaggedCache(alias).invalidate_tags(["a"])
    assert render(source, alias, tick=tick, name="a,b") == "1"
    TaggedCache(alias).invalidate_tags(["a,b"])
    assert render(source, alias, tick=tick, name="a,b") == "2"


def test_fragment_rendered_across_an_invalidation_is_shown_but_not_stored(alias):
    tc = TaggedCache(alias)
    tick = itertools.count(1).__next__

    def invalidate_meanwhile() -> str:
        tc.invalidate_tags(["product:1"])  # a commit lands while the fragment renders
        return ""

    source = '{% cachetagged 60 box tags="product:1" %}{{ tick }}{{ hook }}{% endcachetagged %}'
    assert render(source, alias, tick=tick, hook=invalidate_meanwhile) == "1"
    assert render(source, alias, tick=tick, hook="") == "2"
    assert render(source, alias, tick=tick, hook="") == "2"


def test_timeout_none_means_max_ttl_and_longer_timeouts_are_capped():
    cache = caches["default"]
    for timeout, low, high in [("None", 3590, 3600), ("99999", 3590, 3600), ("30", 1, 30)]:
        name = f"ttl{timeout}"
        render(f'{{% cachetagged {timeout} {name} tags="t" %}}x{{% endcachetagged %}}')
        assert low <= cache.ttl(fragment_key(name)) <= high


def test_timeout_from_a_variable_and_the_default_alias(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "locmem"}
    source = '{% cachetagged seconds box tags="t" %}cached{% endcachetagged %}'
    assert (
        Template("{% load cache_invalidation %}" + source).render(Context({"seconds": "45"}))
        == "cached"
    )
    assert TaggedCache("locmem").get(fragment_key("box")) == "cached"
    assert TaggedCache("default").get(fragment_key("box")) is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{% cachetagged %}",
            (
                "'cachetagged' tag needs a timeout and a fragment name: {% cachetagged timeout "
                "fragment_name [vary_on ...] tags=... [using=...] [local=...] %}"
            ),
        ),
        (
            '{% cachetagged 60 tags="a" %}',
            (
                "'cachetagged' tag needs a timeout and a fragment name: {% cachetagged timeout "
                "fragment_name [vary_on ...] tags=... [using=...] [local=...] %}"
            ),
        ),
        (
            "{% cachetagged 60 box pk %}",
            (
                "'cachetagged' tag needs at least one tags= argument (a fragment without tags is "
                "what {% cache %} is for)"
            ),
        ),
        (
            '{% cachetagged 60 box tags="a" timeout=5 %}',
            (
                "'cachetagged' tag got an unknown keyword argument 'timeout=': it takes tags=, "
                "using= and local="
            ),
        ),
        (
            '{% cachetagged 60 box tags="a" pk %}',
            (
                "'cachetagged' tag got the vary-on value 'pk' after a keyword argument: write "
                "vary-on values before tags=, using= and local="
            ),
        ),
        (
            '{% cachetagged 60 box tags="a" using="x" using="y" %}',
            "'cachetagged' tag got using= more than once",
        ),
        ("{% cachetagged 60 box tags= %}", "'cachetagged' tag got tags= without a value"),
        (
            '{% cachetagged 60 box tags="a,,b" %}',
            (
                "'cachetagged' tag got an empty tag in tags=\"a,,b\": separate non-empty tags "
                "with commas"
            ),
        ),
        ('{% cachetagged 60 "" tags="a" %}', "'cachetagged' tag got an empty fragment name"),
        (
            '{% cachetagged 60 box tags="a" %}never closed',
            "Unclosed tag on line 1: 'cachetagged'. Looking for one of: endcachetagged.",
        ),
        ('{% cachetagged 60 box tags="a"|tag %}', "tag requires 2 arguments, 1 provided"),
    ],
)
def test_syntax_errors_name_what_is_wrong(source, message):
    with pytest.raises(TemplateSyntaxError) as info:
        Template("{% load cache_invalidation %}" + source)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("source", "context", "message"),
    [
        (
            '{% cachetagged seconds box tags="a" %}',
            {"seconds": "soon"},
            "'cachetagged' tag got a non-integer timeout 'soon' from 'seconds'",
        ),
        (
            '{% cachetagged missing box tags="a" %}',
            {},
            "'cachetagged' tag: 'missing' names an unknown variable (lookup of 'missing' failed)",
        ),
        (
            '{% cachetagged 0 box tags="a" %}',
            {},
            (
                "'cachetagged' tag got the timeout 0 from '0': it must be a positive number of "
                "seconds, or None for MAX_TTL"
            ),
        ),
        (
            '{% cachetagged 60 box tags="product"|tag:prodcut.pk %}',
            {"product": {"pk": 1}},
            (
                "'cachetagged' tag: '\"product\"|tag:prodcut.pk' names an unknown variable "
                "(lookup of 'prodcut' failed)"
            ),
        ),
        (
            "{% cachetagged 60 box tags=product_tags %}",
            {"product": {}},
            (
                "'cachetagged' tag: 'product_tags' names an unknown variable "
                "(lookup of 'product_tags' failed)"
            ),
        ),
        (
            "{% cachetagged 60 box tags=product_tags %}",
            {"product_tags": None},
            (
                "'cachetagged' tag: tags=product_tags resolved to None; give a tag string or a list "
                "of tags"
            ),
        ),
        (
            "{% cachetagged 60 box tags=product_tags %}",
            {"product_tags": ["product:1", 7]},
            "'cachetagged' tag: tags=product_tags holds 7; every tag must be a non-empty string",
        ),
        (
            "{% cachetagged 60 box tags=product_tags %}",
            {"product_tags": 7},
            (
                "'cachetagged' tag: tags=product_tags resolved to 7 (int); give a tag string or a "
                "list of tags"
            ),
        ),
        (
            '{% cachetagged 60 box tags="product"|tag:pk %}',
            {"pk": None},
            (
                "tag filter: cannot build a tag from 'product' and None; both parts must be "
                "non-empty"
            ),
        ),
        (
            '{% cachetagged 60 box tags="a" using="nowhere" %}',
            {},
            (
                "'cachetagged' tag: using=\"nowhere\" names the cache 'nowhere', which is not in "
                "CACHES"
            ),
        ),
    ],
)
def test_values_that_turn_out_wrong_raise_when_rendering(source, context, message):
    template = Template("{% load cache_invalidation %}" + source + "x{% endcachetagged %}")
    with pytest.raises(TemplateSyntaxError) as info:
        template.render(Context(context))
    assert str(info.value) == message


# --- cache_page_tagged ----------------------------------------------------------------------


@pytest.fixture
def calls():
    surfaces_urls.calls.clear()
    return surfaces_urls.calls


def body(response: Any) -> str:
    assert response.status_code in (200, 404), response.status_code
    return response.content.decode()


@pytest.mark.urls("tests.surfaces_urls")
def test_second_request_is_served_from_the_cache_until_a_tag_is_invalidated(client, calls):
    assert body(client.get("/plain/")) == "plain call 1"
    assert body(client.get("/plain/")) == "plain call 1"
    assert calls["plain"] == 1
    TaggedCache().invalidate_tags(["page:plain"])
    assert body(client.get("/plain/")) == "plain call 2"


@pytest.mark.urls("tests.surfaces_urls")
def test_tags_from_a_callable_and_the_query_string_in_the_key(client):
    assert body(client.get("/product/1/")) == "product 1 call 1"
    assert body(client.get("/product/2/")) == "product 2 call 1"
    assert body(client.get("/product/1/?page=2")) == "product 1 call 2"
    TaggedCache().invalidate_tags(["product:2"])
    assert body(client.get("/product/1/")) == "product 1 call 1"
    assert body(client.get("/product/2/")) == "product 2 call 2"
    TaggedCache().invalidate_tags(["product:1"])
    assert body(client.get("/product/1/?page=2")) == "product 1 call 3"


@pytest.mark.urls("tests.surfaces_urls")
def test_post_is_never_cached_nor_served_from_the_cache(client, calls):
    client.get("/plain/")
    assert body(client.post("/plain/")) == "plain call 2"
    assert body(client.post("/plain/")) == "plain call 3"
    assert body(client.get("/plain/")) == "plain call 1"


@pytest.mark.urls("tests.surfaces_urls")
def test_head_is_answered_from_the_get_entry_and_never_stores(client, calls):
    client.head("/plain/")
    client.head("/plain/")
    assert calls["plain"] == 2
    assert body(client.get("/plain/")) == "plain call 3"
    response = client.head("/plain/")
    assert response.status_code == 200 and calls["plain"] == 3


@pytest.mark.urls("tests.surfaces_urls")
@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/cookie/", "cookie"),
        ("/csrf/", "csrf"),
        ("/session/", "session"),
        ("/private/", "private"),
        ("/missing/", "missing"),
    ],
)
def test_responses_for_one_visitor_or_errors_are_never_cached(client, calls, url, name):
    first = client.get(url)
    second = client.get(url)
    assert calls[name] == 2
    assert body(second).startswith(f"{name} call 2")
    if name == "cookie":
        assert first.cookies["seen"].value == second.cookies["seen"].value == "1"


@row(
    "A view answering per ``Authorization`` header under ``cache_page_tagged`` (issue 13, 4)",
    "GET with ``Authorization: Bearer alice``, then as bob and anonymously, sync and async "
    "views, GET and HEAD; then a view with ``Authorization`` in ``vary_on_headers``",
    "a request with ``Authorization`` runs the view every time and is never stored nor served "
    "from the cache (RFC 9111 section 3.5); anonymous requests are cached as before; listed "
    "in ``vary_on_headers``, each credential gets its own entry",
)
@pytest.mark.urls("tests.surfaces_urls")
def test_a_request_with_credentials_is_never_stored_nor_served_from_the_cache(
    client, async_client, calls
):
    alice = {"authorization": "Bearer alice"}
    bob = {"authorization": "Bearer bob"}
    assert body(client.get("/bearer/", headers=alice)) == "bearer call 1 for Bearer alice"
    assert body(client.get("/bearer/", headers=bob)) == "bearer call 2 for Bearer bob"
    assert body(client.get("/bearer/")) == "bearer call 3 for anonymous"
    assert body(client.get("/bearer/")) == "bearer call 3 for anonymous"
    assert body(client.get("/bearer/", headers=alice)) == "bearer call 4 for Bearer alice"
    assert client.head("/bearer/", headers=bob).status_code == 200
    assert calls["bearer"] == 5

    async def scenario() -> None:
        first = await async_client.get("/async/bearer/", headers=alice)
        assert body(first) == "async bearer call 1 for Bearer alice"
        second = await async_client.get("/async/bearer/", headers=bob)
        assert body(second) == "async bearer call 2 for Bearer bob"
        assert body(await async_client.get("/async/bearer/")) == "async bearer call 3 for anonymous"
        assert body(await async_client.get("/async/bearer/")) == "async bearer call 3 for anonymous"
        again = await async_client.get("/async/bearer/", headers=alice)
        assert body(again) == "async bearer call 4 for Bearer alice"

    async_to_sync(scenario)()

    varied = "/bearer/varied/"
    assert body(client.get(varied, headers=alice)) == "bearer varied call 1 for Bearer alice"
    assert body(client.get(varied, headers=bob)) == "bearer varied call 2 for Bearer bob"
    assert body(client.get(varied, headers=alice)) == "bearer varied call 1 for Bearer alice"
    assert client.get(varied, headers=alice)["Vary"] == "Authorization"


@row(
    "A cached page showing the visitor's flash message (``django.contrib.messages``, cookie "
    "storage) (issue 13, 4)",
    "a visitor with a pending message asks for a ``cache_page_tagged`` page first, then "
    "another visitor asks for it",
    "the first page (with the message) is not stored; the second visitor sees no message; a "
    "page that showed no message is cached as before",
)
@pytest.mark.urls("tests.surfaces_urls")
def test_a_page_showing_a_flash_message_is_not_stored(client, calls):
    client.get("/remember/")
    assert body(client.get("/messages/")) == "messages call 1 saved"
    other = Client()
    assert body(other.get("/messages/")) == "messages call 2 none"
    assert body(other.get("/messages/")) == "messages call 2 none"
    assert body(client.get("/messages/")) == "messages call 2 none"


@pytest.mark.urls("tests.surfaces_urls")
def test_template_responses_are_rendered_before_caching(client, calls):
    assert body(client.get("/template/")) == "rendered 1 for everyone"
    assert body(client.get("/template/")) == "rendered 1 for everyone"
    assert calls["template"] == 1


@pytest.mark.urls("tests.surfaces_urls")
def test_listed_headers_separate_entries_and_are_added_to_vary(client, calls):
    french = client.get("/language/", headers={"accept-language": "fr"})
    assert body(french) == "language call 1 fr"
    assert french["Vary"] == "Accept-Language"
    assert body(client.get("/language/", headers={"accept-language": "de"})) == (
        "language call 2 de"
    )
    again = client.get("/language/", headers={"accept-language": "fr"})
    assert body(again) == "language call 1 fr" and again["Vary"] == "Accept-Language"


@pytest.mark.urls("tests.surfaces_urls")
def test_async_view_second_request_from_cache_post_and_cookies_never(async_client, calls):
    async def scenario() -> None:
        assert body(await async_client.get("/async/")) == "async call 1"
        assert body(await async_client.get("/async/")) == "async call 1"
        assert body(await async_client.post("/async/")) == "async call 2"
        await TaggedCache().ainvalidate_tags(["page:async"])
        assert body(await async_client.get("/async/")) == "async call 3"
        assert body(await async_client.get("/async/cookie/")) == "async cookie call 1"
        assert body(await async_client.get("/async/cookie/")) == "async cookie call 2"

    async_to_sync(scenario)()


@pytest.mark.urls("tests.surfaces_urls")
def test_async_view_template_response_with_a_fragment(async_client, calls):
    """The page and the fragment inside it are cached separately, each under its own tags."""

    async def page() -> str:
        return body(await async_client.get("/async/template/"))

    async def scenario() -> None:
        assert await page() == "inner tick call 1 outer 1"
        assert await page() == "inner tick call 1 outer 1"
        await TaggedCache().ainvalidate_tags(["page:async-template"])
        assert await page() == "inner tick call 1 outer 2"
        await TaggedCache().ainvalidate_tags(["page:async-template", "fragment:inner"])
        assert await page() == "inner tick call 2 outer 3"

    async_to_sync(scenario)()


@pytest.mark.urls("tests.surfaces_urls")
@pytest.mark.django_db(transaction=True)
def test_async_view_with_async_tags_refreshes_after_a_model_save(async_client, calls):
    with no_invalidation():
        lamps = Category.objects.create(name="Lamps", slug="lamps")
        arc = Product.objects.create(name="Arc", price=Decimal("89.00"), category=lamps)
    url = f"/async/product/{arc.pk}/"

    async def scenario() -> None:
        assert (await async_client.get(url)).json() == {"name": "Arc", "price": "89.00"}
        assert (await async_client.get(url)).json()["price"] == "89.00"
        assert calls["async product"] == 1
        arc.price = Decimal("94.00")
        await arc.asave()
        assert (await async_client.get(url)).json()["price"] == "94.00"
        assert calls["async product"] == 2

    async_to_sync(scenario)()


def test_decorator_arguments_are_checked_when_decorating():
    with pytest.raises(
        TypeError,
        match=r"takes a list of tags or a callable returning one, "
        r"not 'product:1'",
    ):
        cache_page_tagged(tags="product:1")
    with pytest.raises(
        ValueError,
        match=r"cache_page_tagged\(timeout=0\): timeout must be a "
        r"positive number of seconds, or None for MAX_TTL",
    ):
        cache_page_tagged(0, tags=["a"])
    with pytest.raises(TypeError, match="every tag must be a non-empty string, got 7"):
        cache_page_tagged(tags=["product:1", 7])
    with pytest.raises(TypeError, match="takes a list of header names, not the string 'Cookie'"):
        cache_page_tagged(tags=["a"], vary_on_headers="Cookie")


# --- @cached on a coroutine function ---------------------------------------------------------


def test_cached_coroutine_function_is_computed_once_until_invalidated():
    runs: list[int] = []

    @cached(tags=lambda pk: [f"product:{pk}"], timeout=60)
    async def summary(pk: int) -> str:
        runs.append(pk)
        return f"summary {pk} #{len(runs)}"

    run = async_to_sync(summary)
    assert run(1) == "summary 1 #1"
    assert run(1) == "summary 1 #1"
    assert run(2) == "summary 2 #2"
    TaggedCache().invalidate_tags(["product:1"])
    assert run(1) == "summary 1 #3"


# --- the shop: async API view, {% cachetagged %} fragment, cached home page -----------------


@pytest.fixture
def lamp() -> Product:
    with no_invalidation():
        lamps = Category.objects.create(name="Lamps", slug="lamps")
        return Product.objects.create(name="Arc", price=Decimal("89.00"), category=lamps)


@pytest.mark.django_db(transaction=True)
def test_async_api_view_serves_from_cache_and_sees_a_committed_save(async_client, lamp):
    url = f"/api/products/{lamp.pk}/"

    async def scenario() -> None:
        first = await async_client.get(url)
        assert first.status_code == 200 and first["X-Cache"] == "miss"
        assert first.json() == {
            "pk": lamp.pk,
            "name": "Arc",
            "price": "89.00",
            "category": {"pk": lamp.category_id, "name": "Lamps"},
        }
        assert (await async_client.get(url))["X-Cache"] == "hit"
        lamp.name = "Arc II"
        await lamp.asave()
        third = await async_client.get(url)
        assert third["X-Cache"] == "miss" and third.json()["name"] == "Arc II"
        assert (await async_client.get(url))["X-Cache"] == "hit"
        missing = await async_client.get("/api/products/999999/")
        assert missing.status_code == 404

    async_to_sync(scenario)()
    assert TaggedCache().get("product:999999:api") is None


@pytest.mark.django_db(transaction=True)
def test_reviews_fragment_is_cached_and_refreshed_by_a_new_review(
    client, lamp, django_assert_num_queries
):
    url = f"/products/{lamp.pk}/"
    Review.objects.create(product=lamp, rating=4, text="warm light")
    assert "4/5 — warm light" in client.get(url).content.decode()
    with django_assert_num_queries(0):
        assert "4/5 — warm light" in client.get(url).content.decode()
    Review.objects.create(product=lamp, rating=2, text="wobbly")
    page = client.get(url).content.decode()
    assert "2/5 — wobbly" in page and "4/5 — warm light" in page


@pytest.mark.django_db(transaction=True)
def test_home_page_is_cached_whole_until_a_category_or_product_changes(
    client, lamp, django_assert_num_queries
):
    assert "Arc" in client.get("/").content.decode()
    with django_assert_num_queries(0):
        assert "Arc" in client.get("/").content.decode()
    Product.objects.create(name="Globe", price=Decimal("20.00"), category=lamp.category)
    assert "Globe" in client.get("/").content.decode()
    category = lamp.category
    category.name = "Lighting"
    category.save()
    assert "Lighting" in client.get("/").content.decode()
