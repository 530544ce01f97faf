"""Hostile Celery messages: everything in an ``apply_batch`` message is untrusted.

Raw JSON messages are sent with kombu to the suite's real worker thread (anybody who can write
to the broker can do the same); what they may touch is read back from the real Redis.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from django.conf import settings as django_settings
from django.core.cache import caches
from kombu import Connection

from cache_invalidation import InvalidationEvent, TaggedCache, invalidate
from cache_invalidation.events import encode_batch
from cache_invalidation.models import DeadLetter
from tests.conftest import wait_for
from tests.faults import row

pytestmark = [pytest.mark.reliability, pytest.mark.celery, pytest.mark.django_db(transaction=True)]


def send_message(args: list, kwargs: dict, retries: int = 0) -> str:
    """A Celery protocol-2 JSON message for apply_batch, as anyone on the broker could send."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py", "task": "cache_invalidation.apply_batch", "id": task_id,
        "root_id": task_id, "parent_id": None, "group": None, "retries": retries, "eta": None,
        "expires": None, "timelimit": [None, None], "argsrepr": "...", "kwargsrepr": "{}",
        "origin": "attacker",
    }
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                      "chord": None}])
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    with Connection(django_settings.CELERY_BROKER_URL) as conn:
        conn.Producer().publish(body.encode(), exchange="", routing_key=queue, headers=headers,
                                content_type="application/json", content_encoding="utf-8",
                                serializer=None)
    return task_id


def _make_key(key: str) -> str:
    return str(caches["default"].client.make_key(key))


@row("A Celery message whose drains name sets that are not this cache's draining sets",
     "a raw JSON apply_batch message with drains naming another application's set, another "
     "KEY_PREFIX's tag set, this cache's own tag set and an unregistered set under this "
     "cache's ci:d: prefix (each with members whose keys exist)",
     "the drain script refuses them all (a WARNING names them): every set keeps its members "
     "and every member key survives; the message's event is still applied")
def test_drains_from_a_message_touch_only_registered_draining_sets(settings, celery_worker,
                                                                  redis_client, recorder,
                                                                  caplog):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    prefix = django_settings.KEY_PREFIX
    cache = TaggedCache("default")
    cache.set("post-1", "cached", tags=["post:1"])
    foreign = {
        f"{prefix}-billing:invoices": [f"{prefix}-invoice:{i}" for i in range(3)],
        f"{prefix}-other:1:ci:t:post:1": [f"{prefix}-other:1:post-page:{i}" for i in range(3)],
        _make_key("ci:d:forged:1"): [f"{prefix}-forged-member:{i}" for i in range(3)],
    }
    for name, members in foreign.items():
        redis_client.sadd(name, *members)
        for member in members:
            redis_client.set(member, "keep")
    own_tag_set = _make_key("ci:t:post:1")
    names = [*foreign, own_tag_set]
    event = InvalidationEvent(type="manual", tags=("after",))
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        send_message([encode_batch([event])], {"drains": names})
        assert wait_for(lambda: any(event in a["events"] for a in recorder.applied), timeout=20)
    for name, members in foreign.items():
        assert redis_client.scard(name) == len(members), name
        assert all(redis_client.get(m) == b"keep" for m in members), name
    assert redis_client.sismember(own_tag_set, _make_key("post-1"))
    assert cache.get("post-1") == "cached"
    [warning] = [r for r in caplog.records if "refused to drain" in r.getMessage()]
    assert "refused to drain 4 set(s) that are not this cache's registered draining sets" \
        in warning.getMessage()
    assert not DeadLetter.objects.exists()


@row("A Celery message whose drains is not a list of strings",
     "raw JSON apply_batch messages with drains {'a': 1}, 'ci:d:x' and [1, ['x'], None]",
     "the drains are ignored with a WARNING; the message's event is applied, no dead letter, "
     "the worker goes on")
@pytest.mark.parametrize("drains", [{"a": 1}, "ci:d:x", [1, ["x"], None]])
def test_drains_that_are_not_a_list_of_strings_are_ignored(settings, celery_worker, recorder,
                                                          drains):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    cache = TaggedCache("default")
    cache.set("page", "cached", tags=["hostile-drains"])
    event = InvalidationEvent(type="manual", tags=("hostile-drains",))
    send_message([encode_batch([event])], {"drains": drains})
    assert wait_for(lambda: any(event in a["events"] for a in recorder.applied), timeout=20)
    assert cache.get("page") is None
    assert not DeadLetter.objects.exists()
    invalidate(tags=["after"])  # the worker goes on
    assert wait_for(lambda: len(recorder.applied) == 2, timeout=20)
