"""The debug-toolbar panel shows the tags and keys a request read, wrote and invalidated."""

from __future__ import annotations

import re

import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from cache_invalidation import recorder, tagged_cache
from cache_invalidation.panels import CacheInvalidationPanel

pytest.importorskip("debug_toolbar")

pytestmark = pytest.mark.django_db(transaction=True)

TOOLBAR = override_settings(
    INSTALLED_APPS=[*django_settings.INSTALLED_APPS, "debug_toolbar"],
    MIDDLEWARE=[*django_settings.MIDDLEWARE, "debug_toolbar.middleware.DebugToolbarMiddleware"],
    ROOT_URLCONF="tests.panel_urls",
    DEBUG_TOOLBAR_PANELS=["cache_invalidation.panels.CacheInvalidationPanel"],
    DEBUG_TOOLBAR_CONFIG={
        "SHOW_TOOLBAR_CALLBACK": "tests.panel_urls.show_toolbar",
        "IS_RUNNING_TESTS": False,
    },
)


def panel_html(client, url):
    response = client.get(url)
    assert response.status_code == 200
    [request_id] = re.findall(r'data-request-id="([0-9a-f]+)"', response.content.decode())
    rendered = client.get("/__debug__/render_panel/", {
        "request_id": request_id, "panel_id": CacheInvalidationPanel.panel_id})
    assert rendered.status_code == 200
    return response, rendered.json()["content"]


def test_panel_shows_reads_writes_and_invalidations_with_their_tags(client):
    with TOOLBAR:
        response, html = panel_html(client, "/page/?change=1")
        assert b"computed" in response.content
        # The miss computed and stored the entry with its tags...
        assert "<code>panel:page</code>" in html
        assert "<code>panel:product:7</code>" in html
        assert "miss" in html and "yes" in html
        # ...the plain get missed, and the manual event was published after its commit.
        assert "<code>panel:plain</code>" in html
        assert "<code>panel:category:3</code>" in html and "<code>panel:home</code>" in html
        assert ">sync<" in html

        _, html = panel_html(client, "/page/")
        # Second request: a hit, with the tags the entry was stored with.
        assert re.search(r"<code>panel:page</code></td><td>hit</td>\s*<td><code>panel:product:7"
                         r"</code>", html), html
        assert "Nothing invalidated." in html


def test_nothing_is_recorded_without_the_panel():
    assert recorder.current() is None
    tagged_cache.set("k", 1, tags=["t"])
    assert tagged_cache.get("k") == 1
    assert recorder.current() is None

    token = recorder.start()
    tagged_cache.get("k")
    tagged_cache.invalidate_tags(["t"])
    recording = recorder.stop(token)
    assert recording is not None and recorder.current() is None
    assert recording.reads == [{"alias": "default", "key": "k", "hit": True, "tags": []}]
    assert recording.invalidations[0]["tags"] == ["t"]
