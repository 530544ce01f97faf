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

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


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
     "cache's ci:d: prefix (each with members whose keys exist), and 250 more unregistered "
     "names under that prefix (drained at most 100 names a script call)",
     "the drain script refuses them all (a WARNING names them): every set keeps its members "
     "and every member key survives; the message's event is still applied")
@pytest.mark.celery
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
    # ... and more names than one drain call takes, all unregistered.
    names = [*foreign, own_tag_set, *(_make_key(f"ci:d:none:{i}") for i in range(250))]
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
    assert "refused to drain 254 set(s) that are not this cache's registered draining sets" \
        in warning.getMessage()
    assert not DeadLetter.objects.exists()


@row("A Celery message whose drains is not a list of strings",
     "raw JSON apply_batch messages with drains {'a': 1}, 'ci:d:x' and [1, ['x'], None]",
     "the drains are ignored with a WARNING; the message's event is applied, no dead letter, "
     "the worker goes on")
@pytest.mark.parametrize("drains", [{"a": 1}, "ci:d:x", [1, ["x"], None]])
@pytest.mark.celery
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


def _valid(tag: str, **fields: object) -> dict:
    return {**InvalidationEvent(type="manual", tags=(tag,)).to_dict(), **fields}


@row("Hostile entity_type values and metadata in Celery messages",
     "raw JSON apply_batch messages carrying 2,000 events with distinct undeclared entity_type "
     "values (50,000 in the report; the suite sends 2,000), and events whose metadata rows is "
     "a string, a list or -5, beside a valid event",
     "the metrics store keeps only declared models, manual and unknown (the total hash stays "
     "under 100 fields, the snapshot lists no foreign label, the 2,000 count under unknown); "
     "the bad rows values count as one row; every event is applied, no dead letter")
@pytest.mark.celery
def test_hostile_entity_types_do_not_grow_the_metrics(settings, celery_worker, recorder,
                                                      redis_client):
    from cache_invalidation import metrics

    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "MODEL_RATE_LIMIT": 3}
    before = metrics.snapshot()["per_model"].get("unknown", {}).get("day", {}).get("applied", 0)
    hostile = [
        _valid(f"hostile:{i}", type="x.updated", entity_type=f"evil.Model{i}", entity_id="1")
        for i in range(2000)
    ]
    rows = [_valid("rows", type="shop.Product.bulk_updated", entity_type="shop.Product",
                   metadata={"rows": value}) for value in ("many", [1], -5)]
    cache = TaggedCache("default")
    cache.set("page", "cached", tags=["valid-one"])
    valid = _valid("valid-one")
    send_message([hostile], {})
    send_message([[*rows, valid]], {})
    assert wait_for(lambda: sum(len(a["events"]) for a in recorder.applied) == 2004, timeout=30)
    assert cache.get("page") is None
    assert not DeadLetter.objects.exists()
    total = redis_client.hkeys(_make_key("ci:stats:total"))
    assert len(total) < 100, len(total)
    assert not any(k.startswith(b"evil.") for k in total)
    per_model = metrics.snapshot()["per_model"]
    assert set(per_model) <= metrics.declared_labels() | {"manual", "unknown"}
    assert per_model["unknown"]["day"]["applied"] == before + 2000


@row("A Celery message with a hostile retries header",
     "raw JSON apply_batch messages with retries -10**12, 10**12 and 'x' while the cache "
     "alias points at a closed port (every attempt fails), MAX_RETRIES 2",
     "retries is counted as 0..MAX_RETRIES (a WARNING says so): the -10**12 and 'x' messages "
     "are dead-lettered after 3 attempts, the 10**12 one after its first, each within seconds "
     "(it used to retry with zero backoff practically forever)")
@pytest.mark.parametrize(("retries", "attempts"), [(-10**12, 3), (10**12, 3), ("x", 3)])
@pytest.mark.celery
def test_a_hostile_retries_header_is_clamped(settings, celery_worker, recorder, caplog, retries,
                                            attempts):
    settings.CACHES = {
        **settings.CACHES,
        "nowhere": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2},
        },
    }
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "CACHE_ALIAS": "nowhere",
                                   "MAX_RETRIES": 2, "RETRY_BACKOFF": 0.1,
                                   "RETRY_BACKOFF_MAX": 0.2, "RETRY_JITTER": False,
                                   "MAIL_ADMINS": False}
    with caplog.at_level(logging.WARNING, logger="cache_invalidation"):
        send_message([[_valid("unreachable")]], {}, retries=retries)
        assert wait_for(lambda: DeadLetter.objects.exists(), timeout=30)
    [letter] = DeadLetter.objects.all()
    assert (letter.reason, letter.attempts) == ("retries_exhausted", attempts)
    assert any("counted as" in r.getMessage() for r in caplog.records)
    expected = 1 if retries == 10**12 else 3
    assert wait_for(lambda: len(recorder.failed) == expected, timeout=5)
    assert [f["will_retry"] for f in recorder.failed][-1] is False


@row("An event whose timestamp is out of range, beside valid events",
     "a raw JSON apply_batch message of three events: valid, timestamp -1.7e308, valid "
     "(and the decoder given timestamps -1, 1e11 and 1.7e308)",
     "the decoder refuses the out-of-range ones (\"'timestamp' must be between 0 and "
     "10000000000\"); in the message only the poisoned event becomes a malformed dead letter, "
     "the two valid events are applied and counted (no OverflowError)")
@pytest.mark.celery
def test_a_poisoned_event_does_not_take_its_batch_down(settings, celery_worker, recorder):
    from cache_invalidation import InvalidEventError

    for timestamp in (-1, 1e11, 1.7e308, -1.7e308):
        with pytest.raises(InvalidEventError, match=r"'timestamp' must be between 0 and "
                                                    r"10000000000 \(seconds since the epoch\)"):
            InvalidationEvent.from_dict(_valid("t", timestamp=timestamp))
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    cache = TaggedCache("default")
    cache.set("first", "cached", tags=["first"])
    cache.set("last", "cached", tags=["last"])
    poisoned = _valid("poisoned", timestamp=-1.7e308)
    send_message([[_valid("first"), poisoned, _valid("last")]], {})
    assert wait_for(lambda: recorder.applied, timeout=20)
    assert cache.get("first") is None and cache.get("last") is None
    assert [len(a["events"]) for a in recorder.applied] == [2]
    assert wait_for(lambda: DeadLetter.objects.exists(), timeout=5)
    [letter] = DeadLetter.objects.all()
    # (by id: PostgreSQL's jsonb gives -1.7e308 back as an integer, kept as text then)
    assert letter.reason == "malformed" and len(letter.events) == 1
    assert poisoned["id"] in json.dumps(letter.events)
    assert "event 1: 'timestamp' must be between 0 and 10000000000" in letter.last_error


@row("An outbox batch with one row that does not decode",
     "three OutboxEvent rows of one batch written directly: valid, timestamp -1.7e308, valid; "
     "outbox.relay() delivers it",
     "only the bad row becomes a malformed dead letter (and leaves the outbox); the two valid "
     "rows are delivered: their entries are gone and their rows deleted")
def test_a_poisoned_outbox_row_does_not_take_its_batch_down(settings):
    from cache_invalidation import outbox
    from cache_invalidation.models import OutboxEvent

    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox"}
    cache = TaggedCache("default")
    cache.set("first", "cached", tags=["first"])
    cache.set("last", "cached", tags=["last"])
    batch = uuid.uuid4()
    poisoned = _valid("poisoned", timestamp=-1.7e308)
    for event in (_valid("first"), poisoned, _valid("last")):
        OutboxEvent.objects.create(batch=batch, event=event)
    result = outbox.relay()
    assert (result.events, result.dead_lettered, result.failed) == (2, 1, 0)
    assert cache.get("first") is None and cache.get("last") is None
    assert not OutboxEvent.objects.exists()
    [letter] = DeadLetter.objects.all()
    # (by id: PostgreSQL's jsonb gives -1.7e308 back as an integer, kept as text then)
    assert letter.reason == "malformed" and len(letter.events) == 1
    assert poisoned["id"] in json.dumps(letter.events)
