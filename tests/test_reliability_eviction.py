"""Redis evicting the tag index: ``maxmemory`` with an evicting ``maxmemory-policy``.

Each test starts a private ``redis-server`` with its own ``--maxmemory`` and policy (the shared
Redis's configuration is never touched), points ``CACHE_ALIAS`` at it, and asks what an
operator asks: ``cache_invalidation_status``, the admin dashboard, ``manage.py check``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError

from cache_invalidation import TaggedCache, health
from cache_invalidation.checks import check_cache_eviction
from tests.conftest import PrivateRedis
from tests.faults import row

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PAGE = "/admin/cache_invalidation/manualinvalidation/invalidate/"


@pytest.fixture
def lru_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    server.start()
    yield server
    server.stop()


def use(settings: Any, server: PrivateRedis) -> TaggedCache:
    settings.CACHES = {**settings.CACHES, "private": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": server.url,
        "KEY_PREFIX": "evict",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
    }}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    return TaggedCache("private")


def status_exit(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("cache_invalidation_status", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


EVICTS = (
    "the cache 'private' evicts keys when full (maxmemory-policy allkeys-lru, maxmemory "
    "4194304 bytes): an evicted tag set leaves its entries cached while invalidations report "
    "success; set maxmemory-policy to noeviction (and size maxmemory for MAX_TTL)"
)


@row(
    "Redis with ``maxmemory`` and ``allkeys-lru`` evicting the tag index (issue 13, 8)",
    "a private redis-server started with --maxmemory 4mb --maxmemory-policy allkeys-lru; 400 "
    "tagged entries of 20 kB are written until Redis evicts",
    "``cache_invalidation_status`` exits 1 naming the policy, shows ``eviction EVICTS`` and "
    "warns with the evicted_keys count; the admin dashboard lists the same problem and "
    "warning; ``manage.py check`` warns ``cache_invalidation.W005``",
)
def test_an_evicting_redis_is_unhealthy_and_evictions_are_a_warning(settings, client,
                                                                    lru_redis):
    cache = use(settings, lru_redis)
    status = health.status()
    assert status["cache"]["eviction"] == {
        "readable": True, "policy": "allkeys-lru", "maxmemory": 4 * 1024 * 1024,
        "evicted_keys": 0, "evicts": True, "error": None}
    assert EVICTS in status["problems"] and status["warnings"] == []

    for n in range(400):
        cache.set(f"page:{n}", "x" * 20_000, tags=[f"page:{n}", "pages"])
    evicted = int(redis.Redis.from_url(lru_redis.url).info("stats")["evicted_keys"])
    assert evicted > 0
    evicted_warning = (
        f"the cache 'private' has evicted {evicted} key(s) since Redis started (evicted_keys): "
        "entries whose tag sets were evicted stay stale until their TTL")
    assert health.status()["warnings"] == [evicted_warning]

    code, out, message = status_exit()
    assert code == 1 and EVICTS in message
    assert "  eviction  EVICTS    maxmemory-policy allkeys-lru, maxmemory 4194304, " \
           f"evicted_keys {evicted}" in out

    operator = User.objects.create_user("ops", password="pw", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="invalidate_cache"))
    client.force_login(operator)
    page = client.get(PAGE)
    dashboard = page.context["dashboard"]
    assert EVICTS in dashboard["problems"] and dashboard["warnings"] == [evicted_warning]
    assert b'id="ci-warnings"' in page.content

    [warning] = check_cache_eviction()
    assert warning.id == "cache_invalidation.W005"
    assert warning.msg == (
        "The cache 'private' runs on a Redis whose maxmemory-policy is 'allkeys-lru' "
        "(maxmemory is 4194304 bytes): Redis may evict a tag set while the entries it lists "
        "stay cached, and invalidating that tag then deletes nothing and reports success.")


@row(
    "Redis whose policy would evict, without maxmemory yet; Redis that cannot evict; INFO "
    "unreachable (issue 13, 8)",
    "the private redis-server's policy is set (CONFIG SET on the test's own server) to "
    "volatile-lru with maxmemory 0, then noeviction with maxmemory 4mb; then it is stopped",
    "volatile-lru without a limit: healthy, a warning and W005 saying maxmemory is 0; "
    "noeviction: healthy, no warning, no W005; stopped: the cache is down and the check says "
    "nothing (no traceback at startup)",
)
def test_policies_that_cannot_evict_now_or_ever(settings, lru_redis):
    use(settings, lru_redis)
    server = redis.Redis.from_url(lru_redis.url)
    server.config_set("maxmemory", 0)
    server.config_set("maxmemory-policy", "volatile-lru")
    status = health.status()
    assert status["problems"] == [] and status["warnings"] == [
        "the cache 'private' has maxmemory-policy volatile-lru: nothing is evicted while "
        "maxmemory is 0, but the tag index will be once a limit is set; use noeviction"]
    [warning] = check_cache_eviction()
    assert "'volatile-lru' (maxmemory is 0 for now, so nothing is evicted until a limit is " \
           "set)" in warning.msg

    server.config_set("maxmemory-policy", "noeviction")
    server.config_set("maxmemory", 4 * 1024 * 1024)
    status = health.status()
    assert (status["problems"], status["warnings"]) == ([], [])
    assert check_cache_eviction() == []
    assert status_exit()[0] == 0

    lru_redis.stop()
    assert check_cache_eviction() == []
    assert not health.status()["cache"]["ok"]
