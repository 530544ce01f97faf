"""The documentation moves with the code: every setting and check id is documented with its
default, and the reStructuredText parses without warnings.

The Sphinx site (docs/) is built with warnings as errors by .ci/run; here each page is parsed by
plain docutils, with Sphinx's own directives and roles accepted as they are (their content is
Sphinx's to check), so a broken table, title or include fails fast in the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core
import pytest
from docutils import nodes
from docutils.parsers.rst import Directive, directives, roles

from cache_invalidation.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

SPHINX_DIRECTIVES = (
    "toctree", "automodule", "autoclass", "autofunction", "autodata", "autoexception",
    "automethod", "autoattribute", "autodecorator", "currentmodule", "module", "function",
    "class", "data", "method", "attribute", "exception", "decorator", "versionadded",
    "versionchanged", "deprecated", "seealso", "glossary", "only", "literalinclude", "index",
    "highlight",
    "layers",  # the project's own (docs/_ext/layers.py)
)
SPHINX_ROLES = (
    "doc", "ref", "func", "class", "meth", "attr", "mod", "data", "exc", "obj", "term",
    "setting", "command", "envvar", "file", "program", "option", "kbd", "download", "any",
)


class _AnyOption(dict):
    def __missing__(self, key):
        return directives.unchanged


class _SphinxDirective(Directive):
    has_content = True
    optional_arguments = 10
    final_argument_whitespace = True
    option_spec = _AnyOption()

    def run(self):
        return []


def _sphinx_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    return [nodes.literal(rawtext, text)], []


for _name in SPHINX_DIRECTIVES:
    directives.register_directive(_name, _SphinxDirective)
for _name in SPHINX_ROLES:
    roles.register_local_role(_name, _sphinx_role)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_documents_parse_without_warnings(path):
    docutils.core.publish_string(
        path.read_text(), source_path=str(path), writer="null",
        settings_overrides={"halt_level": 2, "report_level": 2},
    )


def test_every_setting_is_in_the_readme_settings_table():
    readme = (ROOT / "README.rst").read_text()
    table = readme[readme.index("\nSettings\n========"):readme.index("\nHow it works\n")]
    missing = [key for key in DEFAULTS if f"``{key}``" not in table]
    assert missing == []


def test_the_readme_settings_table_shows_the_real_defaults():
    readme = (ROOT / "README.rst").read_text()
    table = readme[readme.index("\nSettings\n========"):readme.index("\nHow it works\n")]
    shown = dict(re.findall(r"^``([A-Z][A-Z0-9_]*)``\s+``([^`]+)``", table, re.MULTILINE))

    def written(value):
        return f'"{value}"' if isinstance(value, str) else repr(value)

    wrong = {key: (shown[key], written(value)) for key, value in DEFAULTS.items()
             if key in shown and shown[key] != written(value)}
    assert wrong == {}  # setting: (README says, conf.py has)


def test_every_check_id_is_documented():
    source = "".join(p.read_text() for p in (ROOT / "cache_invalidation").rglob("*.py"))
    ids = set(re.findall(r"cache_invalidation\.([EW]\d{3})", source))
    readme = (ROOT / "README.rst").read_text()
    undocumented = sorted(i for i in ids if i not in readme)
    assert undocumented == []
