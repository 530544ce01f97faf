"""The test settings plus an app whose declaration is broken (see test_startup_check)."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.brokenapp"]  # noqa: F405
