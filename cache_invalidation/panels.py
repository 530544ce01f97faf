"""A django-debug-toolbar panel: what this request read, wrote and invalidated.

Add ``"cache_invalidation.panels.CacheInvalidationPanel"`` to ``DEBUG_TOOLBAR_PANELS`` (needs
``pip install 'django-cache-invalidation[debug-toolbar]'``). For each request the toolbar
instruments, the panel starts a :mod:`~cache_invalidation.recorder` recording and shows:

- **reads**: ``tagged_cache`` hits and misses (``get_or_set``, ``@cached``, ``{% cachetagged
  %}``, ``cache_page_tagged`` and plain ``get``), with the entry's tags where known;
- **writes**: entries stored (or refused by the no-stale-set check), with all their tags;
- **invalidations**: events published while the request ran (with ``TRANSPORT = "sync"`` or
  ``"celery"``: after each commit; ``"outbox"``: when the batch committed) and direct
  ``invalidate_tags`` calls; and plain ``tagged_cache.delete`` calls.

When the panel is off, nothing is recorded: each hook costs one context-variable lookup.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from debug_toolbar.panels import Panel
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import recorder


class CacheInvalidationPanel(Panel):
    title = _("Cache invalidation")
    template = "cache_invalidation/debug_toolbar/panel.html"
    is_async = True

    _token: Token[Any] | None = None

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()
        reads = stats.get("reads", [])
        hits = sum(1 for r in reads if r["hit"])
        invalidated = len(stats.get("invalidations", []))
        return ngettext(
            "%(hits)d/%(reads)d hits, %(invalidated)d invalidation",
            "%(hits)d/%(reads)d hits, %(invalidated)d invalidations",
            invalidated,
        ) % {"hits": hits, "reads": len(reads), "invalidated": invalidated}

    def enable_instrumentation(self) -> None:
        if self._token is None:
            self._token = recorder.start()

    def disable_instrumentation(self) -> None:
        if self._token is not None:
            self._recording = recorder.stop(self._token)
            self._token = None

    def generate_stats(self, request: HttpRequest, response: HttpResponse) -> None:
        recording = getattr(self, "_recording", None) or recorder.Recording()
        reads = recording.reads
        self.record_stats(
            {
                **recording.as_dict(),
                "hits": sum(1 for r in reads if r["hit"]),
                "misses": sum(1 for r in reads if not r["hit"]),
                "refused": sum(1 for w in recording.writes if not w["stored"]),
            }
        )
