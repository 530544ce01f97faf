"""The documentation moves with the code: every setting and check id is documented, and the
reStructuredText parses without warnings."""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core
import pytest

from cache_invalidation.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_documents_parse_without_warnings(path):
    docutils.core.publish_string(
        path.read_text(), writer="null",
        settings_overrides={"halt_level": 2, "report_level": 2},
    )


def test_every_setting_is_in_the_readme_settings_table():
    readme = (ROOT / "README.rst").read_text()
    table = readme[readme.index("\nSettings\n========"):readme.index("\nHow it works\n")]
    missing = [key for key in DEFAULTS if f"``{key}``" not in table]
    assert missing == []


def test_every_check_id_is_documented():
    source = "".join(p.read_text() for p in (ROOT / "cache_invalidation").rglob("*.py"))
    ids = set(re.findall(r"cache_invalidation\.([EW]\d{3})", source))
    readme = (ROOT / "README.rst").read_text()
    undocumented = sorted(i for i in ids if i not in readme)
    assert undocumented == []
