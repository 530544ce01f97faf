"""A broken declaration stops `manage.py check` (and so runserver, migrate) at startup."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_broken_declaration_fails_the_system_check_at_startup():
    result = subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings=tests.settings_broken"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "brokenapp.Shelf: (cache_invalidation.E004) Shelf.Meta.cache_invalidation: tag template "
        "'category:{categry_id}' names no field of brokenapp.Shelf." in result.stderr
    )
    assert "HINT: Did you mean 'category_id'?" in result.stderr
    assert "(cache_invalidation.E002) Shelf.Meta.cache_invalidation: unknown option 'on_field'." in (
        result.stderr
    )


def test_clean_project_passes_the_system_check():
    result = subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings=tests.settings"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
