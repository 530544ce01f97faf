"""docs/reliability.rst cannot drift from the tests: its table is the rows they carry."""

from __future__ import annotations

import pytest

from tests import reliability_table

pytestmark = pytest.mark.reliability


def test_the_reliability_table_matches_the_tests():
    entries = reliability_table.rows()
    assert len(entries) >= 20
    assert reliability_table.current() == reliability_table.render(entries), (
        "docs/reliability.rst is out of date: run "
        "DJANGO_SETTINGS_MODULE=tests.settings python -m tests.reliability_table --write"
    )


def test_every_reliability_test_has_a_row():
    """A test selected by -m reliability either carries its row or checks the document."""
    import importlib
    from pathlib import Path

    tests = Path(reliability_table.__file__).parent
    for path in sorted(tests.glob("test_reliability_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for name, obj in vars(module).items():
            if name.startswith("test_") and getattr(obj, "__module__", "") == module.__name__:
                marks = [m for m in getattr(obj, "pytestmark", []) if m.name == "reliability"]
                assert marks or path.name == "test_reliability_docs.py" \
                    or name in UNTABLED, f"{path.name}::{name} has no row"


# Tests that pin details of a row's test rather than a fault of their own.
UNTABLED = {
    "test_decoder_names_the_problems_of_hostile_values",
    "test_templates_parse_or_raise_template_error",
}
