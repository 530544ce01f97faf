"""Cache keys of the rendering surfaces: ``{% cachetagged %}`` fragments and cached pages.

Pure: no Django settings, no I/O. The variable parts (vary-on values, URLs, header values) are
hashed, so a key is short, free of spaces and control characters whatever the data, and two
different inputs never collide by concatenation ("a:b" + "c" vs "a" + "b:c").

Formats::

    cachetagged:<fragment name>:<hash of the vary-on values>
    cachetagged.page:<key prefix>:<hash of the URL and the varying request values>

``<hash>`` is the first 32 hex digits of the SHA-256 of a JSON list of the ``str()`` of each
value. The cache backend adds its own ``KEY_PREFIX`` and version on top, as for any key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

FRAGMENT_PREFIX = "cachetagged"
PAGE_PREFIX = "cachetagged.page"


def _digest(values: Iterable[object]) -> str:
    raw = json.dumps([str(value) for value in values], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def fragment_key(fragment_name: str, vary_on: Iterable[object] = ()) -> str:
    """The key ``{% cachetagged timeout fragment_name vary_on... %}`` stores its output under.

    Vary-on values are keyed by ``str()``: vary on ``product.pk``, not on ``product`` (whose
    ``str()`` is its name). Raises ``ValueError`` for an empty fragment name.
    """
    if not fragment_name:
        raise ValueError("a fragment name must not be empty")
    return f"{FRAGMENT_PREFIX}:{fragment_name}:{_digest(vary_on)}"


def page_key(key_prefix: str, url: str, varying: Iterable[object] = ()) -> str:
    """The key a page cached by ``cache_page_tagged`` is stored under.

    ``url`` is the absolute URL with its query string; ``varying`` holds everything else the
    response depends on (the listed request headers' values, the active language and time zone).
    """
    return f"{PAGE_PREFIX}:{key_prefix}:{_digest([url, *varying])}"
