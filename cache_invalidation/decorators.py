"""``cache_page_tagged``: cache a view's whole response under tags, for sync and async views.

A response is stored only when it can safely be served to another request for the same URL:
a GET answered with status 200, not streaming, setting no cookie, without ``Cache-Control:
private`` or ``no-store``, and varying on nothing but the headers the decorator was told about.
A view that read the session or used the CSRF token varies on the visitor's cookie (the
middleware adds ``Vary: Cookie`` and cookies later), so its response is not stored either
unless ``Cookie`` is listed in ``vary_on_headers``, and never when it used the CSRF token or
showed or queued a flash message (``django.contrib.messages`` keeps them in a cookie the
middleware sets later). Anything else is returned as it came and logged at DEBUG with the reason.

A request carrying credentials of its own (``Authorization``) is neither answered from the cache
nor stored, unless ``Authorization`` is in ``vary_on_headers`` (RFC 9111 section 3.5: a shared
cache must not reuse a response to an authenticated request for another one): the view runs.

HEAD requests are answered from the GET entry when there is one and never store (a view may
answer HEAD with an empty body). Other methods pass straight through.

No ``Cache-Control: max-age`` or ``Expires`` is added: a browser or proxy copy could not be
invalidated, so only this server-side copy is kept.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils import timezone, translation
from django.utils.cache import patch_vary_headers

from .cachekeys import page_key
from .logfields import log_extra
from .tagging import TaggedCache

logger = logging.getLogger("cache_invalidation")

V = TypeVar("V", bound=Callable[..., Any])
Tags = Iterable[str] | Callable[..., Iterable[str]]

_SPLIT = re.compile(r"\s*,\s*")


class _Uncacheable(Exception):
    """Raised inside ``get_or_set``'s callable so that nothing is stored."""

    def __init__(self, response: HttpResponseBase, reason: str) -> None:
        super().__init__(reason)
        self.response = response


def cache_page_tagged(
    timeout: int | None = None,
    *,
    tags: Tags,
    key_prefix: str | None = None,
    vary_on_headers: Sequence[str] = (),
    using: str | None = None,
) -> Callable[[V], V]:
    """Cache the view's response in the tagged cache; invalidating any of ``tags`` drops it.

    ``timeout``: seconds, ``None`` for ``MAX_TTL``; capped at ``MAX_TTL``. ``tags``: a list of
    tags, or a callable ``(request, *args, **kwargs) -> list of tags`` called on every request
    (before the lookup) with the view's arguments, e.g. ``lambda request, pk: [f"product:{pk}"]``.
    For an async view it may be a coroutine function; a plain function runs on the event loop.
    ``key_prefix`` defaults to the view's dotted path. The key covers the absolute URL with its
    query string, the values of ``vary_on_headers`` (which are also added to ``Vary``), the
    active language and time zone. ``using`` picks a cache alias (default ``CACHE_ALIAS``).

    The response is stored through ``get_or_set``, so a response rendered across an
    invalidation of one of its tags is returned but not stored. Concurrent misses each run the
    view (no compute lease, as with Django's ``cache_page``): a lease would make concurrent
    requests for a page that turns out uncacheable wait for one another. Template responses
    are rendered here, before storing. Raises ``TypeError``/``ValueError`` at decoration for
    bad arguments.
    """
    if isinstance(tags, str) or not (callable(tags) or isinstance(tags, Iterable)):
        raise TypeError(
            f"cache_page_tagged(tags=...) takes a list of tags or a callable returning one, "
            f"not {tags!r}"
        )
    static_tags = None if callable(tags) else list(tags)
    for tag in static_tags or ():
        if not isinstance(tag, str) or not tag:
            raise TypeError(
                f"cache_page_tagged(tags=...): every tag must be a non-empty string, got {tag!r}"
            )
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        raise ValueError(
            f"cache_page_tagged(timeout={timeout!r}): timeout must be a positive number of "
            "seconds, or None for MAX_TTL"
        )
    varies = tuple(vary_on_headers)
    if isinstance(vary_on_headers, str):
        raise TypeError(
            f"cache_page_tagged(vary_on_headers=...) takes a list of header names, not the "
            f"string {vary_on_headers!r}"
        )

    def decorate(view: V) -> V:
        prefix = key_prefix if key_prefix is not None else f"{view.__module__}.{view.__qualname__}"
        cache = TaggedCache(using)

        def key_for(request: HttpRequest) -> str:
            values = [request.headers.get(name, "") for name in varies]
            return page_key(
                prefix,
                request.build_absolute_uri(),
                [*values, translation.get_language(), timezone.get_current_timezone_name()],
            )

        if iscoroutinefunction(view):

            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if request.method not in ("GET", "HEAD") or _bypass(request, varies):
                    return await view(request, *args, **kwargs)
                if static_tags is not None:
                    tag_list = static_tags
                elif iscoroutinefunction(tags):
                    tag_list = list(await tags(request, *args, **kwargs))
                else:
                    tag_list = list(tags(request, *args, **kwargs))  # type: ignore[operator]
                key = key_for(request)
                if request.method == "HEAD":
                    stored = await cache.aget(key)
                    if stored is not None:
                        return _rebuild(stored)
                    return await view(request, *args, **kwargs)
                fresh: list[HttpResponseBase] = []

                async def compute() -> dict[str, Any]:
                    response = await view(request, *args, **kwargs)
                    if _needs_render(response):
                        await sync_to_async(response.render)()
                    fresh.append(response)
                    return _capture(request, response, varies)

                try:
                    stored = await cache.aget_or_set(
                        key, compute, tags=tag_list, timeout=timeout, lease=False
                    )
                except _Uncacheable as exc:
                    return exc.response
                return fresh[0] if fresh else _rebuild(stored)

            return functools.wraps(view)(async_wrapper)  # type: ignore[return-value]

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if request.method not in ("GET", "HEAD") or _bypass(request, varies):
                return view(request, *args, **kwargs)
            if static_tags is not None:
                tag_list = static_tags
            else:
                tag_list = list(tags(request, *args, **kwargs))  # type: ignore[operator]
            key = key_for(request)
            if request.method == "HEAD":
                stored = cache.get(key)
                return _rebuild(stored) if stored is not None else view(request, *args, **kwargs)
            fresh: list[HttpResponseBase] = []

            def compute() -> dict[str, Any]:
                response = view(request, *args, **kwargs)
                if _needs_render(response):
                    response.render()
                fresh.append(response)
                return _capture(request, response, varies)

            try:
                stored = cache.get_or_set(key, compute, tags=tag_list, timeout=timeout, lease=False)
            except _Uncacheable as exc:
                return exc.response
            return fresh[0] if fresh else _rebuild(stored)

        return wrapper  # type: ignore[return-value]

    return decorate


#: Request headers that carry the caller's own credentials: a request with one is answered by
#: the view, never from or into the cache, unless the header is in ``vary_on_headers``.
PER_USER_REQUEST_HEADERS = ("Authorization",)


def _bypass(request: HttpRequest, vary_on_headers: Sequence[str]) -> bool:
    """Whether ``request`` must skip the cache both ways (lookup and store), logged at DEBUG."""
    allowed = {name.lower() for name in vary_on_headers}
    for header in PER_USER_REQUEST_HEADERS:
        if header.lower() not in allowed and header in request.headers:
            logger.debug(
                "Not caching %s %s: the request carries %s, which is not in vary_on_headers",
                request.method,
                request.get_full_path(),
                header,
                extra=log_extra(stage="page_cache"),
            )
            return True
    return False


def _needs_render(response: Any) -> bool:
    return callable(getattr(response, "render", None)) and not getattr(
        response, "is_rendered", True
    )


def _uncacheable_reason(
    request: HttpRequest, response: HttpResponseBase, vary_on_headers: Sequence[str]
) -> str | None:
    """Why ``response`` must not be served to another request for the same key, or None."""
    if response.streaming:
        return "it is a streaming response"
    if response.status_code != 200:
        return f"its status is {response.status_code}"
    if response.cookies or response.has_header("Set-Cookie"):
        return "it sets a cookie"
    directives = {
        d.split("=", 1)[0].lower() for d in _SPLIT.split(response.get("Cache-Control", ""))
    }
    for directive in ("private", "no-store"):
        if directive in directives:
            return f"it has Cache-Control: {directive}"
    allowed = {name.lower() for name in vary_on_headers}
    varies = [v for v in _SPLIT.split(response.get("Vary", "").strip()) if v]
    for header in varies:
        if header == "*" or header.lower() not in allowed:
            return f"it has Vary: {header}, which is not in vary_on_headers"
    if request.META.get("CSRF_COOKIE_NEEDS_UPDATE"):
        return "it used the CSRF token, which is the visitor's own"
    # Only messages the view actually loaded (or queued) count: a base template looping over
    # an empty ``messages`` is still a page for everyone. ``_loaded_data`` is set by the
    # storage when it reads; asking ``len()`` here would read the session itself.
    messages = getattr(request, "_messages", None)
    if messages is not None and (
        getattr(messages, "added_new", False) or getattr(messages, "_loaded_data", None)
    ):
        return "it read or queued a flash message, which is the visitor's own"
    session = getattr(request, "session", None)
    if session is not None and getattr(session, "accessed", False) and "cookie" not in allowed:
        return "the view read the session, so it varies on Cookie, which is not in vary_on_headers"
    return None


def _capture(
    request: HttpRequest, response: HttpResponseBase, vary_on_headers: Sequence[str]
) -> dict[str, Any]:
    reason = _uncacheable_reason(request, response, vary_on_headers)
    if reason is not None:
        logger.debug(
            "Not caching %s %s: %s",
            request.method,
            request.get_full_path(),
            reason,
            extra=log_extra(stage="page_cache"),
        )
        raise _Uncacheable(response, reason)
    if vary_on_headers:
        patch_vary_headers(response, vary_on_headers)
    return {
        "status": response.status_code,
        "content": cast(HttpResponse, response).content,  # not streaming: checked above
        "headers": list(response.headers.items()),
    }


def _rebuild(stored: dict[str, Any]) -> HttpResponse:
    response = HttpResponse(stored["content"], status=stored["status"])
    for name, value in stored["headers"]:
        response.headers[name] = value
    return response
