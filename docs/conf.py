"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``.

Autodoc imports the package, so Django is set up with the test settings (no service is
contacted: nothing here touches a database or a cache). Two checks keep the site honest and
fail the build (warnings are errors): every name in ``cache_invalidation.__all__`` must be
documented on the API page, and the settings reference is README.rst's table, which
``tests/test_docs.py`` compares with ``cache_invalidation.conf.DEFAULTS``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))  # the layers directive
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402 - after sys.path and the settings module are set

django.setup()

from sphinx.util import logging  # noqa: E402

import cache_invalidation  # noqa: E402

project = "django-cache-invalidation"
author = "django-cache-invalidation developers"
copyright = "django-cache-invalidation developers"
release = cache_invalidation.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "layers"]
exclude_patterns = ["_build"]
root_doc = "index"
nitpicky = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# Offline builds: no inventories are fetched, references to Django stay plain text.
intersphinx_mapping: dict[str, Any] = {}
html_theme = "alabaster"
html_title = f"django-cache-invalidation {release}"
html_static_path: list[str] = []


def _check_public_api(app: Any, env: Any) -> None:
    """Warn (an error under -W) for a public name the API page does not document."""
    documented = set(env.get_domain("py").objects)
    for name in cache_invalidation.__all__:
        if f"cache_invalidation.{name}" not in documented:
            logging.getLogger(__name__).warning(
                "cache_invalidation.%s is in __all__ but not documented in docs/api.rst", name
            )


def setup(app: Any) -> dict[str, Any]:
    app.connect("env-check-consistency", _check_public_api)
    return {"parallel_read_safe": True}
