"""Views decorated with ``cache_page_tagged`` for tests/test_surfaces.py. Each view counts its
calls in ``calls`` and puts the count in its body, so a test sees whether the view ran."""

from __future__ import annotations

from collections import Counter

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path

from cache_invalidation import cache_page_tagged

calls: Counter[str] = Counter()


def counted(name: str) -> str:
    calls[name] += 1
    return f"{name} call {calls[name]}"


@cache_page_tagged(tags=["page:plain"])
def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse(counted("plain"))


@cache_page_tagged(60, tags=lambda request, pk: [f"product:{pk}"], key_prefix="product-page")
def product(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponse(counted(f"product {pk}"))


@cache_page_tagged(tags=["page:cookie"])
def sets_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(counted("cookie"))
    response.set_cookie("seen", "1")
    return response


@cache_page_tagged(tags=["page:csrf"])
def uses_csrf_token(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{counted('csrf')} {get_token(request)}")


@cache_page_tagged(tags=["page:session"])
def reads_session(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{counted('session')} {request.session.get('name', 'anonymous')}")


@cache_page_tagged(tags=["page:private"])
def private(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(counted("private"))
    response["Cache-Control"] = "private, max-age=60"
    return response


@cache_page_tagged(tags=["page:missing"])
def not_found(request: HttpRequest) -> HttpResponse:
    return HttpResponse(counted("missing"), status=404)


@cache_page_tagged(tags=["page:template"])
def template(request: HttpRequest) -> TemplateResponse:
    counted("template")
    source = "rendered {{ calls }} for {{ who }}"
    tpl = engines["django"].from_string(source)
    return TemplateResponse(request, tpl, {"calls": calls["template"], "who": "everyone"})


@cache_page_tagged(tags=["page:language"], vary_on_headers=["Accept-Language"])
def language(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{counted('language')} {request.headers.get('Accept-Language')}")


def caller(request: HttpRequest) -> str:
    return request.headers.get("Authorization", "anonymous")


@cache_page_tagged(tags=["page:bearer"])
def bearer(request: HttpRequest) -> HttpResponse:
    """Answers per ``Authorization`` header without saying so in ``Vary``, as many APIs do."""
    return HttpResponse(f"{counted('bearer')} for {caller(request)}")


@cache_page_tagged(tags=["page:bearer-varied"], vary_on_headers=["Authorization"])
def bearer_varied(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{counted('bearer varied')} for {caller(request)}")


@cache_page_tagged(tags=["page:async-bearer"])
async def async_bearer(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{counted('async bearer')} for {caller(request)}")


def remember(request: HttpRequest) -> HttpResponse:
    """Not cached: queues a flash message for the visitor's next page, as a form view does."""
    messages.info(request, "saved")
    return HttpResponse("remembered")


@cache_page_tagged(tags=["page:messages"])
def shows_messages(request: HttpRequest) -> HttpResponse:
    """Shows the visitor's flash messages (kept in a cookie by the default storage)."""
    shown = " ".join(str(m) for m in messages.get_messages(request)) or "none"
    return HttpResponse(f"{counted('messages')} {shown}")


@cache_page_tagged(tags=["page:async"])
async def async_plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse(counted("async"))


async def product_tags(request: HttpRequest, pk: int) -> list[str]:
    return [f"product:{pk}"]


@cache_page_tagged(tags=product_tags)
async def async_product(request: HttpRequest, pk: int) -> JsonResponse:
    from testproject.shop.models import Product

    calls["async product"] += 1
    item = await Product.objects.aget(pk=pk)
    return JsonResponse({"name": item.name, "price": str(item.price)})


@cache_page_tagged(tags=["page:async-cookie"])
async def async_sets_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(counted("async cookie"))
    response.set_cookie("seen", "1")
    return response


@cache_page_tagged(tags=["page:async-template"])
async def async_template(request: HttpRequest) -> TemplateResponse:
    """A template response from an async view, with a {% cachetagged %} fragment inside."""
    source = (
        "{% load cache_invalidation %}"
        '{% cachetagged 60 inner tags="fragment:inner" %}inner {{ tick }}{% endcachetagged %}'
        " outer {{ calls }}"
    )
    calls["async template"] += 1
    return TemplateResponse(
        request,
        engines["django"].from_string(source),
        {"tick": lambda: counted("tick"), "calls": calls["async template"]},
    )


urlpatterns = [
    path("plain/", plain),
    path("product/<int:pk>/", product),
    path("cookie/", sets_cookie),
    path("csrf/", uses_csrf_token),
    path("session/", reads_session),
    path("private/", private),
    path("missing/", not_found),
    path("template/", template),
    path("language/", language),
    path("bearer/", bearer),
    path("bearer/varied/", bearer_varied),
    path("async/bearer/", async_bearer),
    path("remember/", remember),
    path("messages/", shows_messages),
    path("async/", async_plain),
    path("async/product/<int:pk>/", async_product),
    path("async/cookie/", async_sets_cookie),
    path("async/template/", async_template),
]
