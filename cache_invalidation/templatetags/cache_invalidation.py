"""``{% cachetagged %}``: a template fragment cached under tags, and the ``tag`` filter.

Usage::

    {% load cache_invalidation %}
    {% cachetagged timeout fragment_name [vary_on ...] tags=... [tags=...] [using="alias"]
                   [local=True] %}
        ... expensive part ...
    {% endcachetagged %}

Like Django's ``{% cache %}``: ``timeout`` is a template expression (seconds, or ``None`` for
``MAX_TTL``; capped at ``MAX_TTL``); ``fragment_name`` is a literal name; every vary-on value
gives its own entry (keyed by ``str()``, see :func:`cache_invalidation.cachekeys.fragment_key`).

``tags=`` (at least one, may be repeated) says what invalidates the fragment:

* a literal string is split on commas: ``tags="catalogue, prices"``;
* any other expression is one tag if it resolves to a string, or several if it resolves to a
  list (or tuple, set...) of strings: ``tags=review_tags``, ``tags="product"|tag:product.pk``.
  Its value is never split on commas, so data cannot add tags.

The fragment is rendered through ``get_or_set``: when a tag is invalidated while the fragment
renders, this response shows what was rendered but nothing is stored. Mistakes in the tag's
arguments raise ``TemplateSyntaxError`` when the template is compiled; values that turn out
wrong when rendering (unknown variable, non-integer timeout, a tag that is not a non-empty
string, an unknown cache alias) raise ``TemplateSyntaxError`` when rendering, never a silently
untagged entry.

``local=True`` (or any expression resolving to a bool) also keeps the fragment in this
process's memory, coherent with every invalidation (:mod:`cache_invalidation.localcache`);
without it, ``LOCAL_CACHE["DEFAULT"]`` decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.cache import InvalidCacheBackendError, caches
from django.template import Context, Library, Node, NodeList, TemplateSyntaxError
from django.template.base import FilterExpression, Parser, Token, VariableDoesNotExist

from ..cachekeys import fragment_key
from ..tagging import TaggedCache, tagged_cache

register = Library()

USAGE = "{% cachetagged timeout fragment_name [vary_on ...] tags=... [using=...] [local=...] %}"
_KEYWORD = re.compile(r"(\w+)=(.*)", re.DOTALL)
_KEYWORDS = ("tags", "using", "local")

TagSource = tuple[str, ...] | FilterExpression
"""Literal tags, split at compile time, or an expression resolved when rendering."""


class CacheTaggedNode(Node):
    def __init__(
        self,
        nodelist: NodeList,
        timeout: FilterExpression,
        fragment_name: str,
        vary_on: list[FilterExpression],
        tags: list[TagSource],
        using: FilterExpression | None,
        local: FilterExpression | None = None,
    ) -> None:
        self.local = local
        self.nodelist = nodelist
        self.timeout = timeout
        self.fragment_name = fragment_name
        self.vary_on = vary_on
        self.tags = tags
        self.using = using

    def render(self, context: Context) -> str:
        timeout = self._timeout(context)
        tags = self._tags(context)
        cache = self._cache(context)
        vary_on = [_resolve(expr, context, strict=False) for expr in self.vary_on]
        key = fragment_key(self.fragment_name, vary_on)
        return cache.get_or_set(
            key,
            lambda: self.nodelist.render(context),
            tags=tags,
            timeout=timeout,
            local=self._local(context),
        )

    def _local(self, context: Context) -> bool | None:
        if self.local is None:
            return None
        value = _resolve(self.local, context)
        if not isinstance(value, bool):
            raise TemplateSyntaxError(
                f"'cachetagged' tag: local={self.local.token} resolved to {value!r}; give "
                "True or False"
            )
        return value

    def _timeout(self, context: Context) -> int | None:
        value = _resolve(self.timeout, context)
        if value is None:
            return None
        try:
            seconds = int(value)
        except (TypeError, ValueError):
            raise TemplateSyntaxError(
                f"'cachetagged' tag got a non-integer timeout {value!r} from {self.timeout.token!r}"
            ) from None
        if seconds <= 0:
            raise TemplateSyntaxError(
                f"'cachetagged' tag got the timeout {seconds!r} from {self.timeout.token!r}: "
                "it must be a positive number of seconds, or None for MAX_TTL"
            )
        return seconds

    def _tags(self, context: Context) -> list[str]:
        out: list[str] = []
        for source in self.tags:
            if isinstance(source, tuple):
                out.extend(source)
                continue
            value = _resolve(source, context)
            where = f"'cachetagged' tag: tags={source.token}"
            if value is None:
                raise TemplateSyntaxError(
                    f"{where} resolved to None; give a tag string or a list of tags"
                )
            if isinstance(value, str):
                if not value:
                    raise TemplateSyntaxError(f"{where} resolved to an empty string")
                out.append(value)
                continue
            if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
                raise TemplateSyntaxError(
                    f"{where} resolved to {value!r} ({type(value).__name__}); give a tag "
                    "string or a list of tags"
                )
            for item in value:
                if not isinstance(item, str) or not item:
                    raise TemplateSyntaxError(
                        f"{where} holds {item!r}; every tag must be a non-empty string"
                    )
                out.append(item)
        return out

    def _cache(self, context: Context) -> TaggedCache:
        if self.using is None:
            return tagged_cache
        alias = _resolve(self.using, context)
        try:
            caches[alias]
        except (InvalidCacheBackendError, TypeError):
            raise TemplateSyntaxError(
                f"'cachetagged' tag: using={self.using.token} names the cache {alias!r}, "
                "which is not in CACHES"
            ) from None
        return TaggedCache(alias)


def _resolve(expr: FilterExpression, context: Context, strict: bool = True) -> Any:
    """Resolve ``expr``; with ``strict``, a variable missing from the context is an error
    (Django would quietly give ``string_if_invalid``)."""
    try:
        if strict and expr.is_var:
            expr.var.resolve(context)
        return expr.resolve(context)
    except VariableDoesNotExist as exc:
        params = getattr(exc, "params", ())
        failed = f" (lookup of {params[0]!r} failed)" if params else ""
        raise TemplateSyntaxError(
            f"'cachetagged' tag: {expr.token!r} names an unknown variable{failed}"
        ) from exc


def _literal_tags(expr: FilterExpression, raw: str) -> tuple[str, ...] | None:
    """The tags of a plain string literal, split on commas; None for anything else."""
    if expr.is_var or expr.filters or not isinstance(expr.var, str):
        return None
    tags = tuple(part.strip() for part in expr.var.split(","))
    if not all(tags):
        raise TemplateSyntaxError(
            f"'cachetagged' tag got an empty tag in tags={raw}: separate non-empty tags with commas"
        )
    return tags


@register.tag("cachetagged")
def do_cachetagged(parser: Parser, token: Token) -> CacheTaggedNode:
    """Compile ``{% cachetagged ... %}...{% endcachetagged %}`` (grammar in the module doc)."""
    bits = token.split_contents()[1:]
    positional: list[str] = []
    tags: list[TagSource] = []
    using: FilterExpression | None = None
    local: FilterExpression | None = None
    for bit in bits:
        match = _KEYWORD.fullmatch(bit)
        if match is None:
            if tags or using is not None or local is not None:
                raise TemplateSyntaxError(
                    f"'cachetagged' tag got the vary-on value {bit!r} after a keyword "
                    "argument: write vary-on values before tags=, using= and local="
                )
            positional.append(bit)
            continue
        name, raw = match.groups()
        if name not in _KEYWORDS:
            raise TemplateSyntaxError(
                f"'cachetagged' tag got an unknown keyword argument '{name}=': it takes "
                "tags=, using= and local="
            )
        if not raw:
            raise TemplateSyntaxError(f"'cachetagged' tag got {name}= without a value")
        expr = parser.compile_filter(raw)
        if name == "using":
            if using is not None:
                raise TemplateSyntaxError("'cachetagged' tag got using= more than once")
            using = expr
        elif name == "local":
            if local is not None:
                raise TemplateSyntaxError("'cachetagged' tag got local= more than once")
            local = expr
        else:
            literal = _literal_tags(expr, raw)
            tags.append(literal if literal is not None else expr)
    if len(positional) < 2:
        raise TemplateSyntaxError(f"'cachetagged' tag needs a timeout and a fragment name: {USAGE}")
    if not tags:
        raise TemplateSyntaxError(
            "'cachetagged' tag needs at least one tags= argument (a fragment without tags "
            "is what {% cache %} is for)"
        )
    timeout, name, *vary_on = positional
    fragment_name = name[1:-1] if len(name) >= 2 and name[0] == name[-1] in "\"'" else name
    if not fragment_name:
        raise TemplateSyntaxError("'cachetagged' tag got an empty fragment name")
    nodelist = parser.parse(("endcachetagged",))
    parser.delete_first_token()
    return CacheTaggedNode(
        nodelist,
        parser.compile_filter(timeout),
        fragment_name,
        [parser.compile_filter(bit) for bit in vary_on],
        tags,
        using,
        local,
    )


@register.filter(name="tag")
def tag_filter(value: Any, part: Any) -> str:
    """Join two parts of a tag with a colon: ``"product"|tag:product.pk`` gives ``product:7``.

    Chains: ``"category"|tag:category.pk|tag:"products"`` gives ``category:3:products``.
    Raises ``TemplateSyntaxError`` when either part is None or empty, which would otherwise
    build a tag nothing ever invalidates.
    """
    if value is None or part is None or str(value) == "" or str(part) == "":
        raise TemplateSyntaxError(
            f"tag filter: cannot build a tag from {value!r} and {part!r}; both parts must "
            "be non-empty"
        )
    return f"{value}:{part}"
