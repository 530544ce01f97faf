"""Bad input: fuzzed events, declarations, tag and key names, hostile Celery messages.

Hypothesis generates the input; what runs is the real decoder, the real declaration validator
on models created on the fly, the real Redis and version-stamp storages, and the suite's real
Celery worker reading raw messages sent with kombu.
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import models
from django.test.utils import isolate_apps
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kombu import Connection

from cache_invalidation import (
    InvalidationEvent,
    InvalidEventError,
    TaggedCache,
    invalidate,
    keytemplates,
    registry,
)
from cache_invalidation.events import decode_batch, encode_batch, encoded_size
from cache_invalidation.models import DeadLetter
from tests.conftest import wait_for
from tests.faults import examples, row

pytestmark = pytest.mark.reliability

FUZZ = hypothesis_settings(
    max_examples=examples(150), deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- values a message or a row can carry ------------------------------------------------------
hostile_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=240, max_size=300),
    st.sampled_from([
        "", "*", "?", "[a-z]", "\\", "{pk}", "{", "}", "{{}}", "a\nb", "a\rb", "\x00", "\x7f",
        "\t", " ", "tag with spaces", "ci:seq", "ci:t:other", "*:*", "\ud800", "ü", "日本",
        "🙂", "x" * 1000, "%s%n", "${jndi:x}", "'; DROP TABLE x; --",
    ]),
)
numbers = st.one_of(
    st.integers(), st.integers(min_value=10**18, max_value=10**30), st.floats(),
    st.just(5000).map(lambda digits: 10**digits),  # repr() refuses it: mind the messages
    st.just(float("nan")), st.just(float("inf")),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12,
)
python_values = st.one_of(json_values, st.binary(), st.tuples(json_values),
                          st.frozensets(st.integers()), st.builds(object))

FIELDS = ["version", "id", "type", "entity_type", "entity_id", "timestamp", "correlation_id",
          "tags", "keys", "changed_fields", "metadata"]


@st.composite
def near_events(draw: Any) -> Any:
    """A valid event dict with some fields replaced, removed or added: deep in the decoder."""
    data = InvalidationEvent(type="shop.Product.updated", tags=("product:1",),
                             keys=("k",), entity_type="shop.Product").to_dict()
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        action = draw(st.sampled_from(["replace", "remove", "list-of"]))
        if action == "remove":
            data.pop(name, None)
        elif action == "list-of":
            data[name] = draw(st.lists(hostile_text, max_size=3))
        else:
            data[name] = draw(python_values)
    for key, value in draw(st.dictionaries(hostile_text, json_values, max_size=2)).items():
        data[key] = value
    return data


def check_decoded(event: InvalidationEvent) -> None:
    """What the decoder lets through can be stored and sent anywhere, unchanged."""
    wire = json.dumps(event.to_dict(), allow_nan=False)
    assert "\\u0000" not in wire
    assert InvalidationEvent.from_dict(json.loads(wire)) == event
    assert encoded_size(event) > 0


@row("Fuzzed events for the decoder",
     "Hypothesis: arbitrary JSON and Python values, and valid events with fields replaced, "
     "removed or added (NaN, infinities, 5000-digit integers, NUL, unpaired surrogates, "
     "deep nesting, non-string keys), through InvalidationEvent.from_dict and decode_batch",
     "only InvalidEventError (listing every problem) or an event that round-trips through "
     "strict JSON; never another exception")
@FUZZ
@given(data=st.one_of(python_values, near_events(), st.lists(near_events(), max_size=3)))
def test_decoder_raises_only_invalid_event_error(data):
    for decode in (InvalidationEvent.from_dict, decode_batch,
                   lambda d: decode_batch(d, max_event_bytes=512)):
        try:
            result = decode(data)
        except InvalidEventError as exc:
            assert exc.problems and str(exc).startswith("malformed invalidation event: ")
            continue
        for event in result if isinstance(result, list) else [result]:
            check_decoded(event)


def test_decoder_names_the_problems_of_hostile_values():
    base = InvalidationEvent(type="manual", tags=("a",)).to_dict()
    cases = {
        "timestamp": (float("nan"), "'timestamp' must be a finite number, got nan"),
        "version": (10**5000, "'version' <an integer of 16610 bits> is not supported"),
        "tags": (["a\x00b"], "'tags' must not contain NUL characters"),
        "keys": (["\ud800"], "'keys' must be valid Unicode text (it contains an unpaired "
                             "surrogate)"),
        "metadata": ({"n": float("inf")}, "'metadata' holds the number inf"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(InvalidEventError) as info:
            InvalidationEvent.from_dict({**base, name: value})
        assert message in str(info.value)
    deep: Any = {}
    for _ in range(1000):
        deep = {"d": deep}
    with pytest.raises(InvalidEventError, match="nested more than 32 levels deep"):
        InvalidationEvent.from_dict({**base, "metadata": deep})


# -- declarations -----------------------------------------------------------------------------
template_text = st.one_of(
    hostile_text,
    st.sampled_from(["{pk}", "{name}", "{parent_id}", "{parent}", "{children}", "{nmae}",
                     "{0}", "{}", "{name.upper}", "{name[0]}", "{name!r}", "{name:>9}",
                     "p:{pk}:{name}", "{{pk}}", "{pk", "pk}", "{ pk }", "{__class__}"]),
)
declaration_values = st.recursive(
    st.one_of(leaves, template_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(hostile_text, st.sampled_from(
                                ["name", "parent", "parent_id", "children", "pk", "nope"])),
                                inner, max_size=3)),
    max_leaves=10,
)
declarations = st.one_of(
    python_values,
    st.dictionaries(
        st.one_of(st.sampled_from(["tags", "keys", "on_fields", "related", "tgas"]), hostile_text),
        st.one_of(st.lists(template_text, max_size=3), declaration_values,
                  st.lists(st.sampled_from(["parent", "children", "name", "nope", 3]),
                           max_size=2)),
        max_size=4,
    ),
)
_model_numbers = itertools.count()


@row("Fuzzed Meta.cache_invalidation declarations",
     "Hypothesis: declarations of any shape (wrong types, unknown options, templates with "
     "attribute/index access, conversions, format specs, stray braces, relations that do not "
     "exist) on models created on the fly, through registry.build",
     "only Problems with ids E001-E008 naming the model, never an exception; a declaration "
     "without problems gives a policy whose templates render")
@FUZZ
@given(declared=declarations)
def test_declaration_validator_reports_only_problems(declared):
    number = next(_model_numbers)
    with isolate_apps("tests.testapp"):
        parent = type(f"FuzzParent{number}", (models.Model,), {
            "__module__": "tests.testapp.models",
            "Meta": type("Meta", (), {"app_label": "testapp",
                                      "cache_invalidation": {"tags": ["parent:{pk}"]}}),
        })
        child = type(f"FuzzChild{number}", (models.Model,), {
            "__module__": "tests.testapp.models",
            "Meta": type("Meta", (), {"app_label": "testapp", "cache_invalidation": declared}),
            "name": models.CharField(max_length=10),
            "parent": models.ForeignKey(parent, models.CASCADE, related_name="children"),
        })
        built = registry.build([parent, child])
    for problem in built.problems:
        assert isinstance(problem, registry.Problem)
        assert problem.id in {f"cache_invalidation.E00{i}" for i in range(1, 9)}
        assert problem.msg.startswith(f"FuzzChild{number}.Meta.cache_invalidation: ")
    policy = built.policies.get(child)
    if policy is not None:
        values = {"pk": 1, "id": 1, "name": "n", "parent_id": 2}
        for template in (*policy.tags, *policy.keys):
            assert isinstance(template.render(values), str)
    else:
        assert built.problems or declared is None


@FUZZ
@given(source=st.one_of(template_text, st.text()))
def test_templates_parse_or_raise_template_error(source):
    try:
        template = keytemplates.parse(source)
    except keytemplates.TemplateError as exc:
        assert str(exc)
        return
    assert all(name.isidentifier() for name in template.fields)
    assert template.render(dict.fromkeys(template.fields, "v")).count("{") <= source.count("{")


# -- tag and key names ------------------------------------------------------------------------
tag_names = st.lists(hostile_text.filter(bool), min_size=1, max_size=4)


@pytest.fixture
def neighbours(settings, redis_client):
    """Another application's keys in the same Redis database, and our own bystanders."""
    other = f"{django_settings.KEY_PREFIX}-other"
    outside = {f"{other}:1:{name}": b"keep" for name in
               ("page", "ci:seq", "ci:t:victim", "product:1", "*", "[a]")}
    redis_client.mset(outside)
    yield other, outside
    redis_client.delete(*outside)


def bystanders(cache: TaggedCache) -> None:
    cache.set("bystander", "keep", tags=["bystander-tag"])
    cache.set("bystander-plain", "keep")


def assert_bystanders(cache: TaggedCache) -> None:
    assert cache.get("bystander") == "keep"
    assert cache.get("bystander-plain") == "keep"


@row("Fuzzed tag and key names (control characters, over 250 characters, glob characters "
     "* ? [ ] \\, braces, non-ASCII)",
     "Hypothesis: entries stored under fuzzed tags, then invalidated directly, through "
     "invalidate() (sync transport) and through the decoder, on Redis and on the "
     "version-stamp storage (LocMem, with Django's memcached key warnings as errors)",
     "the fuzzed entries are dropped; bystander entries, other tags and another prefix's "
     "keys in the same Redis database all survive; NUL and unpaired surrogates are refused "
     "with a clear error")
@pytest.mark.django_db(transaction=True)
@FUZZ
@given(tags=tag_names, keys=st.lists(hostile_text.filter(bool).filter(
    # A plain key is deleted by design: keys name what to delete. Not the bystanders', and
    # not the app's own bookkeeping under "ci:" (see the report on reserved keys).
    lambda k: not k.startswith(("bystander", "ci:"))), max_size=3))
def test_fuzzed_tags_and_keys_never_touch_anybody_else(settings, redis_client, neighbours,
                                                       tags, keys):
    other, outside = neighbours
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync"}
    refusable = [t for t in [*tags, *keys] if "\x00" in t or _surrogate(t)]
    for alias in ("default", "locmem"):
        cache = TaggedCache(alias)
        bystanders(cache)
        if any(_surrogate(t) for t in tags):
            continue  # cannot be a Redis key or a JSON string: see the invalidate() check below
        cache.set("fuzzed", "value", tags=tags)
        assert cache.get("fuzzed") == "value"
        cache.invalidate_tags(tags)
        assert cache.get("fuzzed") is None
        assert_bystanders(cache)
        if alias == "default":
            for key in keys:
                if not _surrogate(key):
                    cache.set(key, "plain")
            cache.set("fuzzed", "value", tags=tags)
            if refusable:
                with pytest.raises(ValueError, match=r"NUL characters|unpaired surrogate"):
                    invalidate(tags=tags, keys=keys)
            else:
                event = invalidate(tags=tags, keys=keys)
                assert cache.get("fuzzed") is None
                assert all(cache.get(k) is None for k in keys)
                [decoded] = decode_batch(json.loads(json.dumps(encode_batch([event]))))
                assert decoded == event
            assert_bystanders(cache)
    assert {k: redis_client.get(k) for k in outside} == outside


def _surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@row("A tag containing a newline, read by an enclosing cached computation",
     "an inner entry tagged 'a\\nb' is read while an outer entry computes; then 'a\\nb' is "
     "invalidated",
     "the outer entry depends on 'a\\nb' itself and is dropped (the tags kept beside an "
     "entry are stored as JSON, not split on newlines)")
def test_a_tag_with_a_newline_reaches_the_enclosing_entry(redis_client):
    cache = TaggedCache("default")
    cache.set("inner", "v", tags=["a\nb"])
    assert cache.get_or_set("outer", lambda: cache.get_or_set("inner", lambda: "x",
                                                              tags=["a\nb"])) == "v"
    assert cache.get("outer") == "v"
    cache.invalidate_tags(["a\nb"])
    assert cache.get("outer") is None


@row("A KEY_PREFIX with glob characters",
     "a cache whose KEY_PREFIX contains * and [ sweeps its tag index (prune_index, "
     "index_stats) next to another prefix that the glob would match",
     "only its own tag sets are read and pruned: the other prefix's dead members stay")
def test_index_maintenance_stays_inside_a_glob_prefix(settings, redis_client):
    base = django_settings.KEY_PREFIX
    settings.CACHES = {**settings.CACHES,
                       "globby": {**settings.CACHES["default"], "KEY_PREFIX": f"{base}-g*["},
                       "victim": {**settings.CACHES["default"], "KEY_PREFIX": f"{base}-gx["}}
    victim_set = f"{base}-gx[:1:ci:t:t"
    redis_client.sadd(victim_set, f"{base}-gx[:1:gone")  # a dead member of the other prefix
    TaggedCache("globby").set("mine", 1, tags=["t"])
    assert TaggedCache("globby").index_stats()["tag_sets"] == 1  # its own, not the victim's
    TaggedCache("globby").prune_index()
    assert redis_client.smembers(victim_set) == {f"{base}-gx[:1:gone".encode()}


# -- hostile messages to the worker -----------------------------------------------------------
class Evil:
    """Unpickling this creates a directory: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        import os

        return (os.mkdir, (str(self.marker),))


def send_raw(body: bytes, content_type: str, encoding: str = "binary") -> str:
    """A Celery protocol-2 task message for apply_batch, as anyone on the broker could send."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py", "task": "cache_invalidation.apply_batch", "id": task_id,
        "root_id": task_id, "parent_id": None, "group": None, "retries": 0, "eta": None,
        "expires": None, "timelimit": [None, None], "argsrepr": "...", "kwargsrepr": "{}",
        "origin": "attacker",
    }
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    with Connection(django_settings.CELERY_BROKER_URL) as conn:
        conn.Producer().publish(body, exchange="", routing_key=queue, headers=headers,
                                content_type=content_type, content_encoding=encoding,
                                serializer=None)
    return task_id


@row("A pickled (or unknown content type) Celery message",
     "raw kombu messages for apply_batch sent to the worker's queue with content types "
     "application/x-python-serialize (a pickle that would create a directory when loaded) "
     "and application/x-evil",
     "the worker refuses to deserialize them (CELERY_ACCEPT_CONTENT is json only): nothing "
     "runs, the pickle is never loaded, the worker goes on with the next JSON message")
@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_pickled_and_unknown_messages_are_refused(settings, celery_worker, recorder, tmp_path,
                                                  caplog):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery"}
    assert django_settings.CELERY_ACCEPT_CONTENT == ["json"]
    marker = tmp_path / "unpickled"
    evil = InvalidationEvent(type="manual", tags=("pickled",))
    payload = ((encode_batch([evil]), Evil(marker)), {}, {})
    cache = TaggedCache("default")
    cache.set("pickled-page", "keep", tags=["pickled"])
    with caplog.at_level(logging.ERROR):
        send_raw(pickle.dumps(payload), "application/x-python-serialize")
        send_raw(b"anything", "application/x-evil")
        follower = invalidate(tags=["after-the-hostile-ones"])  # a normal JSON message
        assert wait_for(lambda: any(follower in k["events"] for k in recorder.applied),
                        timeout=20)
    assert not marker.exists()
    assert cache.get("pickled-page") == "keep"  # the pickled batch was never applied
    refusals = [r.getMessage() for r in caplog.records
                if "Refusing to deserialize" in r.getMessage()]
    assert any("application/x-python-serialize" in m for m in refusals), refusals
    assert any("application/x-evil" in m for m in refusals), refusals
    assert not DeadLetter.objects.exists()


@row("An oversized event",
     "a JSON apply_batch message whose event encodes to more than MAX_EVENT_BYTES (set to "
     "4096 here) is sent to the worker; the app's own event of the same size goes through "
     "invalidate()",
     "the foreign message is dead-lettered (reason malformed, the size and MAX_EVENT_BYTES in "
     "its error) and nothing is invalidated; the app's own event is published in parts under "
     "the limit and fully applied")
@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_oversized_event_is_dead_lettered_with_its_reason(settings, celery_worker, recorder):
    from cache_invalidation.tasks import apply_batch

    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "MAX_EVENT_BYTES": 4096}
    cache = TaggedCache("default")
    tags = [f"product:{i}" for i in range(600)]
    for tag in tags[:3] + tags[-3:]:
        cache.set(f"page-{tag}", "cached", tags=[tag])
    big = InvalidationEvent(type="manual", tags=tuple(tags))
    assert encoded_size(big) > 4096
    apply_batch.apply_async(args=[encode_batch([big])], serializer="json")
    assert wait_for(lambda: DeadLetter.objects.filter(reason="malformed").exists(), timeout=20)
    letter = DeadLetter.objects.get()
    assert f"event 0: {encoded_size(big)} bytes encoded, over the limit of 4096 " \
           "(MAX_EVENT_BYTES)" in letter.last_error
    assert cache.get("page-product:0") == "cached"  # refused, not applied

    own = invalidate(tags=tags)
    parts = [e for batch in recorder.published for e in batch]
    assert len(parts) > 1 and all(encoded_size(p) <= 4096 for p in parts)
    assert {t for p in parts for t in p.tags} == set(tags)
    assert all(p.id.startswith(own.id + ".") for p in parts)
    assert wait_for(lambda: all(cache.get(f"page-{t}") is None for t in tags[:3] + tags[-3:]),
                    timeout=20)
    assert DeadLetter.objects.count() == 1


# -- a Redis user without dangerous commands --------------------------------------------------
@row("A Redis ACL user denied @dangerous commands (no KEYS, FLUSHDB, INFO, CONFIG...)",
     "a private redis-server with ACL SETUSER app on >pw ~* &* +@all -@dangerous; the cache "
     "LOCATION is redis://app:pw@...",
     "set, get_or_set, invalidate, prune_index, index_stats, replay and the health status "
     "all work; nothing but an optional INFO is ever denied")
@pytest.mark.django_db(transaction=True)
def test_the_app_works_without_dangerous_commands(settings, private_redis):
    from cache_invalidation import deadletter

    admin = redis.Redis(port=private_redis.port)
    admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all",
                          "-@dangerous")
    app_client = redis.Redis(port=private_redis.port, username="app", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_client.keys("*")
    settings.CACHES = {**settings.CACHES, "acl": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://app:pw@127.0.0.1:{private_redis.port}/0"}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "acl"}
    cache = TaggedCache("acl")
    assert cache.set("page", "v1", tags=["t"])
    assert cache.get_or_set("other", lambda: "computed", tags=["t"]) == "computed"
    invalidate(tags=["t"])
    assert cache.get("page") is None and cache.get("other") is None
    for i in range(300):  # a large tag is drained in chunks (SPOP), not by KEYS
        cache.set(f"member:{i}", i, tags=["large"])
    assert cache.invalidate_tags(["large"]) == 300
    cache.set("dying", 1, tags=["t"], timeout=1)
    admin.delete(cache.backend._key("dying"))  # its member is now dead
    stats = cache.index_stats()
    assert stats["dead_members"] == 1
    assert cache.prune_index()["removed"] == 1
    letter = deadletter.record([InvalidationEvent(type="manual", tags=("t",))],
                               DeadLetter.Reason.APPLY_FAILED, "test")
    assert deadletter.replay([letter.pk]).replayed == [letter.pk]
    from cache_invalidation import health

    assert health.status()["cache"]["ok"]  # PING answers; its optional INFO may be denied
    denied = {e["object"] for e in admin.acl_log() if e.get("username") == "app"}
    assert denied <= {"keys", "info"}  # the test's own KEYS probe, health's optional INFO
