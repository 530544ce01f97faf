#!/usr/bin/env bash
# Release smoke test: build the sdist and the wheel, check their metadata, then install the
# wheel (built from the sdist) into a fresh virtualenv outside the checkout and use it the way
# a project would: `django-admin check`, the app's migrations, and a save that invalidates a
# cached value, on LocMem with the sync transport (no service needed).
#
# Usage: scripts/smoke_wheel.sh [PYTHON]   PYTHON has `build` and `twine` (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "smoke: building sdist and wheel"
rm -rf dist
"$PYTHON" -m build --outdir dist . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
ls dist
"$PYTHON" -m twine check --strict dist/*

WHEEL="$(ls dist/*.whl)"
echo "smoke: checking the wheel's contents"
"$PYTHON" - "$WHEEL" <<'PY'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
required = [
    "cache_invalidation/__init__.py",
    "cache_invalidation/py.typed",
    "cache_invalidation/migrations/0001_initial.py",
    "cache_invalidation/templatetags/cache_invalidation.py",
]
missing = [n for n in required if n not in names]
stray = [n for n in names if n.split("/")[0] in ("tests", "testproject", "benchmarks", "docs")]
license_ok = any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
if missing or stray or not license_ok:
    sys.exit(f"smoke: wheel contents wrong: missing {missing}, stray {stray}, license {license_ok}")
print(f"smoke: {len(names)} files, py.typed and migrations included, no tests")
PY

echo "smoke: installing the wheel into a clean virtualenv"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL" 2>&1 | grep -v "^WARNING: Location" || true
"$WORK/venv/bin/python" -c "import cache_invalidation" # the install really happened

mkdir -p "$WORK/project/smokeapp"
touch "$WORK/project/smokeapp/__init__.py"
cat >"$WORK/project/smoke_settings.py" <<'PY'
SECRET_KEY = "smoke"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "cache_invalidation",
    "smokeapp",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "smoke.sqlite3"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CACHE_INVALIDATION = {"TRANSPORT": "sync"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PY
cat >"$WORK/project/smokeapp/models.py" <<'PY'
from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=50)


class Product(models.Model):
    name = models.CharField(max_length=50)
    category = models.ForeignKey(Category, on_delete=models.CASCADE)

    class Meta:
        cache_invalidation = {"tags": ["product:{pk}", "category:{category_id}:products"]}
PY
cat >"$WORK/project/roundtrip.py" <<'PY'
import importlib.metadata
import pathlib
import sys

import django

django.setup()

import cache_invalidation  # noqa: E402
from cache_invalidation import invalidate, tagged_cache  # noqa: E402
from django.db import transaction  # noqa: E402
from smokeapp.models import Category, Product  # noqa: E402

where = pathlib.Path(cache_invalidation.__file__)
assert "site-packages" in where.parts, f"imported from {where}, not from the installed wheel"
assert cache_invalidation.__version__ == importlib.metadata.version("django-cache-invalidation")

lamps, chairs = Category.objects.create(name="Lamps"), Category.objects.create(name="Chairs")
product = Product.objects.create(name="Arc", category=lamps)
key = f"product:{product.pk}:page"
assert tagged_cache.get_or_set(key, lambda: "page v1", tags=[f"product:{product.pk}"]) == "page v1"
assert tagged_cache.get(key) == "page v1"

with transaction.atomic():  # rolled back: nothing is invalidated
    product.name = "Arc 2"
    product.save()
    transaction.set_rollback(True)
assert tagged_cache.get(key) == "page v1", "a rolled-back save invalidated"

tagged_cache.set("listing", "lamps", tags=[f"category:{lamps.pk}:products"])
product.refresh_from_db()
product.category = chairs  # the old category's listing must go too
product.save()
assert tagged_cache.get(key) is None, "a committed save did not invalidate"
assert tagged_cache.get("listing") is None, "the old state's tag was not invalidated"

tagged_cache.set("home", "v1", tags=["home"])
invalidate(tags=["home"])
assert tagged_cache.get("home") is None, "invalidate() did not invalidate"
print(f"smoke: round trip passed with cache_invalidation {cache_invalidation.__version__} "
      f"from {where.parent}, Django {django.get_version()}, Python {sys.version.split()[0]}")
PY

echo "smoke: django-admin check, migrate, round trip (in $WORK/project)"
cd "$WORK/project"
export DJANGO_SETTINGS_MODULE=smoke_settings PYTHONPATH="$WORK/project"
"$WORK/venv/bin/django-admin" check --fail-level WARNING
"$WORK/venv/bin/django-admin" migrate --run-syncdb -v 0
"$WORK/venv/bin/python" -W error roundtrip.py
echo "smoke: passed"
