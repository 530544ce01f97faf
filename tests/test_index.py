"""The tag index at scale: big tags drain in short chunks, churn does not grow the index."""

from __future__ import annotations

import time

import pytest
import redis

from cache_invalidation import TaggedCache
from tests.conftest import PrivateRedis


@pytest.fixture
def slow_log_redis(tmp_path, settings):
    """A private Redis that records every command in SLOWLOG, used as the cache."""
    server = PrivateRedis(tmp_path, "--slowlog-log-slower-than", "0",
                          "--slowlog-max-len", "100000", "--appendonly", "no")
    server.start()
    settings.CACHES = {
        **settings.CACHES,
        "private": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.url,
                    "KEY_PREFIX": "big"},
    }
    yield server, redis.Redis.from_url(server.url)
    server.stop()


def test_invalidating_a_tag_with_100k_members_works_in_bounded_chunks(slow_log_redis):
    """Each call touches at most CHUNK members, so Redis is blocked for one chunk at a time
    (about a millisecond; timings are measured by `python -m benchmarks bigtag`, not here), and
    members are never all loaded into Python or into one script call."""
    from cache_invalidation.backends.redis import CHUNK

    server, raw = slow_log_redis
    cache = TaggedCache("private")
    cache.set("seed", 0, tags=["huge"])  # creates the tag set through the real code path
    tag_set = "big:1:ci:t:huge"
    pipe = raw.pipeline(transaction=False)
    for i in range(100_000):
        member = f"big:1:item:{i}"
        pipe.set(member, b"x", px=600_000)
        pipe.sadd(tag_set, member)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    assert raw.scard(tag_set) == 100_001
    raw.slowlog_reset()

    deleted = cache.invalidate_tags(["huge"])

    assert deleted == 100_001
    assert raw.dbsize() <= 4  # only the sequence, its epoch and the tag version remain
    log = raw.slowlog_get(100_000)
    commands = [entry["command"].split(b" ") for entry in log]
    assert not any(c[0] in (b"SMEMBERS", b"KEYS") for c in commands)  # no unbounded reads
    deletes = [len(c) - 1 for c in commands if c[0] == b"DEL"]
    assert deletes and max(deletes) <= CHUNK
    scripts = [c for c in commands if c[0] == b"EVALSHA"]
    assert len(scripts) >= 100_000 // CHUNK  # the work really was spread over many calls
    top = sorted(log, key=lambda e: -e["duration"])[:3]
    print("longest:", [(e["duration"], e["command"][:50]) for e in top])


def test_churn_does_not_grow_the_index_and_prune_empties_dead_members(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_TTL": 60}
    cache = TaggedCache("default")
    for round_ in range(4):
        for i in range(1000):
            cache.set(f"churn:{round_}:{i}", i, tags=["churn"], timeout=1)
        time.sleep(1.1)  # this round's entries expire
    stats = cache.index_stats()
    # 4000 entries were tagged, all dead now; lazy pruning kept the set far below that.
    assert stats["tag_sets"] == 1
    assert stats["members"] < 2500, stats
    assert stats["dead_members"] == stats["members"]
    pruned = cache.prune_index()
    assert pruned["removed"] == stats["dead_members"]
    assert cache.index_stats() == {"tag_sets": 0, "members": 0, "dead_members": 0}


def test_prune_task_runs_in_a_real_worker(celery_worker, settings):
    from cache_invalidation.tasks import prune_tag_index

    cache = TaggedCache("default")
    cache.set("short", 1, tags=["prunable"], timeout=1)
    cache.set("long", 1, tags=["prunable"], timeout=60)
    time.sleep(1.1)
    prune_tag_index.apply_async(serializer="json")
    from tests.conftest import wait_for

    # Generous: in CI two matrix sessions share the two cores with this worker.
    assert wait_for(lambda: cache.index_stats()["dead_members"] == 0, timeout=60)
    assert cache.index_stats()["members"] == 1


def test_prune_finishes_a_drain_whose_drainer_was_lost(settings, redis_client):
    """The state a lost drainer leaves: the tag's member set renamed for draining and listed in
    the registry, its members still cached. The periodic prune claims and drains it."""
    cache = TaggedCache("default")
    for i in range(250):
        cache.set(f"orphan-{i}", "v", tags=["orphaned"])
    make_key = cache.backend.client_wrapper.make_key  # type: ignore[attr-defined]
    target = make_key("ci:d:lost:1:1")
    redis_client.rename(make_key("ci:t:orphaned"), target)
    redis_client.zadd(make_key("ci:draining"), {target: 0})  # claimed long ago
    assert cache.get("orphan-0") == "v"
    cache.prune_index()
    assert sum(cache.get(f"orphan-{i}") is not None for i in range(250)) == 0
    assert not redis_client.exists(target)
    assert redis_client.zcard(make_key("ci:draining")) == 0
