"""Nothing lost: failed invalidations land in the dead-letter queue and replay from there."""

from __future__ import annotations

import io
import json
import logging
import threading

import django
import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from cache_invalidation import TaggedCache, deadletter, invalidate, signals
from cache_invalidation.models import DeadLetter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def outage(settings, private_redis):
    """The invalidation cache is a private Redis the test can stop and start."""
    settings.CACHES = {
        **settings.CACHES,
        "private": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": private_redis.url,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.3, "SOCKET_TIMEOUT": 0.5},
        },
    }
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    return private_redis


def replay(*args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("replay_dead_letters", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


def test_sync_failure_is_dead_lettered_and_replayed_once_redis_is_back(outage):
    cache = TaggedCache("private")
    cache.set("page", "stale soon", tags=["product:1"])
    outage.stop()
    event = invalidate(tags=["product:1"], keys=["product:1:detail"])  # the request goes on
    [letter] = DeadLetter.objects.all()
    assert (letter.reason, letter.status, letter.attempts) == ("apply_failed", "pending", 1)
    assert letter.tags == ["product:1"] and letter.keys == ["product:1:detail"]
    assert letter.event_ids == [event.id]

    code, _, message = replay("--all")
    assert code == 1
    assert message.startswith(f"1 dead letter(s) failed again and stay pending: #{letter.pk} (")
    letter.refresh_from_db()
    assert (letter.status, letter.attempts) == ("pending", 2)
    assert "ConnectionError" in letter.last_error

    outage.start()
    assert cache.get("page") == "stale soon"  # still there: the invalidation never ran
    code, out, _ = replay("--id", str(letter.pk))
    assert (code, out.strip()) == (0, "Replayed 1 dead letter(s).")
    assert cache.get("page") is None
    letter.refresh_from_db()
    assert letter.status == "replayed" and letter.resolved_at is not None
    assert replay("--all")[1].strip() == "No pending dead letters match."


def make_letters(n):
    return [
        deadletter.record([invalidate_event(f"t{i}")], DeadLetter.Reason.PUBLISH_FAILED, "boom")
        for i in range(n)
    ]


def invalidate_event(tag):
    from cache_invalidation import InvalidationEvent

    return InvalidationEvent(type="manual", tags=(tag,))


def test_dry_run_tells_the_truth_and_changes_nothing(settings):
    letters = make_letters(3)
    code, out, _ = replay("--all", "--dry-run", "--limit", "2")
    assert code == 0
    assert out.strip() == f"Would replay 2 dead letter(s): #{letters[0].pk}, #{letters[1].pk}."
    assert DeadLetter.objects.filter(status="pending").count() == 3
    code, out, _ = replay("--all", "--dry-run", "--json")
    assert json.loads(out) == {"dry_run": True, "would_replay": 3,
                               "ids": [letter.pk for letter in letters]}


def test_json_summary_and_limit():
    letters = make_letters(3)
    code, out, _ = replay("--all", "--limit", "2", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["replayed"] == 2 and summary["failed"] == 0
    assert summary["replayed_ids"] == [letters[0].pk, letters[1].pk]
    assert DeadLetter.objects.filter(status="pending").count() == 1


def test_bad_invocations_exit_2_with_a_clear_message():
    assert replay() == (2, "", "Say which dead letters to replay: --id N (repeatable), "
                                "--older-than or --all.")
    code, _, message = replay("--older-than", "yesterday")
    assert code == 2
    assert message == ("--older-than 'yesterday' is not a duration; write a number and a unit, "
                       "such as 90s, 15m, 2h or 7d.")


def test_older_than_selects_by_first_failure():
    from datetime import timedelta

    from django.utils import timezone

    old, new = make_letters(2)
    DeadLetter.objects.filter(pk=old.pk).update(
        first_failed_at=timezone.now() - timedelta(hours=3))
    code, out, _ = replay("--older-than", "2h", "--json")
    assert json.loads(out)["replayed_ids"] == [old.pk]


def test_malformed_dead_letters_fail_replay_until_discarded():
    letter = deadletter.record([{"type": "x"}], DeadLetter.Reason.MALFORMED, "bad")
    code, _, message = replay("--id", str(letter.pk))
    assert code == 1 and "malformed invalidation event" in message
    assert deadletter.discard([letter.pk]) == 1
    assert DeadLetter.objects.get(pk=letter.pk).status == "discarded"


# Django 6.0 deprecates (name, address) pairs; before it, ADMINS must hold pairs.
ADMINS = ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]


def test_alert_past_the_threshold(settings, caplog):
    settings.ADMINS = ADMINS
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "ALERT_AFTER_ATTEMPTS": 2}
    seen = []
    signals.dead_lettered.connect(lambda **kw: seen.append(kw), weak=False, dispatch_uid="t")
    try:
        with caplog.at_level(logging.ERROR, logger="cache_invalidation"):
            quiet = deadletter.record([invalidate_event("a")], "publish_failed", "once")
            loud = deadletter.record([invalidate_event("b")], "retries_exhausted", "x",
                                     attempts=2)
    finally:
        signals.dead_lettered.disconnect(dispatch_uid="t")
    assert [kw["dead_letter"].pk for kw in seen] == [loud.pk]
    levels = {r.getMessage().split(" (")[0]: r.levelno for r in caplog.records}
    assert levels[f"cache_invalidation: dead letter #{quiet.pk}"] == logging.ERROR
    assert levels[f"cache_invalidation: dead letter #{loud.pk}"] == logging.CRITICAL
    [email] = mail.outbox
    assert email.to == ["ops@example.com"]
    assert f"dead letter #{loud.pk}" in email.subject
    assert f"replay_dead_letters --id {loud.pk}" in email.body


def test_an_alert_mail_that_cannot_be_sent_is_logged_not_raised(settings, caplog, monkeypatch):
    settings.ADMINS = ADMINS
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "ALERT_AFTER_ATTEMPTS": 1}

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("no mail server")

    monkeypatch.setattr("django.core.mail.mail_admins", refuse)
    with caplog.at_level(logging.ERROR, logger="cache_invalidation"):
        row = deadletter.record([invalidate_event("c")], "retries_exhausted", "x", attempts=1)
    assert DeadLetter.objects.filter(pk=row.pk).exists()
    assert f"cache_invalidation: could not mail ADMINS about dead letter #{row.pk}" in caplog.text


def test_alert_email_can_be_turned_off(settings):
    settings.ADMINS = ADMINS
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAIL_ADMINS": False}
    deadletter.record([invalidate_event("b")], "retries_exhausted", "x", attempts=9)
    assert mail.outbox == []


@pytest.mark.skipif("connection.vendor != 'postgresql'",
                    reason="SKIP LOCKED needs PostgreSQL; SQLite serialises writers")
def test_concurrent_replays_never_process_a_row_twice(recorder):
    ids = [letter.pk for letter in make_letters(20)]
    start = threading.Barrier(2)
    results = []

    def worker():
        start.wait()
        try:
            results.append(deadletter.replay(ids))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    replayed = [pk for r in results for pk in r.replayed]
    assert sorted(replayed) == sorted(ids)  # each exactly once, between the two replays
    assert len(recorder.applied) == 20


def test_replay_finishes_the_drains_of_a_partial_failure(redis_client):
    cache = TaggedCache("default")
    cache.set("a", 1, tags=["big"])
    cache.set("b", 2, tags=["big"])
    raw_set = str(cache.backend._key("ci:t:big"))
    drain = str(cache.backend._key("ci:d:test:1"))
    redis_client.rename(raw_set, drain)  # where a failed drain leaves the members
    # ... registered, as the invalidation script registers every set it renames
    redis_client.zadd(cache.backend._key("ci:draining"), {drain: 0})
    letter = deadletter.record([invalidate_event("big")], "apply_failed", "mid-drain",
                               tags=(), keys=(), drains=[drain])
    assert replay("--id", str(letter.pk))[0] == 0
    assert cache.get("a") is None and cache.get("b") is None
    assert not redis_client.exists(drain)


def test_redelivered_events_are_no_ops_and_counted(settings):
    from cache_invalidation import metrics
    from cache_invalidation.apply import apply_events

    cache = TaggedCache("default")
    event = invalidate_event("dup")
    before = metrics.read()["duplicates"]
    cache.set("x", 1, tags=["dup"])
    apply_events([event])
    cache.set("x", 2, tags=["dup"])  # a fresh value after the first delivery
    assert apply_events([event]) == 0  # the redelivery does nothing...
    assert cache.get("x") == 2  # ...so it does not drop fresh data either
    assert metrics.read()["duplicates"] == before + 1


def test_partial_failure_dead_letters_only_the_unfinished_drain(settings, private_redis):
    """The invalidation script succeeds, then draining a large tag fails (an ACL denies SPOP to
    the app's Redis user): only the unfinished drain is dead-lettered, and replaying it once
    the permission is back deletes the remaining members."""
    import redis as redis_py

    admin = redis_py.Redis.from_url(private_redis.url)
    admin.execute_command("ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-spop")
    settings.CACHES = {**settings.CACHES, "acl": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://app:secret@127.0.0.1:{private_redis.port}/0"}}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "acl"}
    cache = TaggedCache("acl")
    for i in range(500):  # more than one chunk: the tag is drained, not deleted inline
        cache.set(f"member:{i}", i, tags=["large"])
    cache.set("small", 1, tags=["small"])

    invalidate(tags=["large", "small"], keys=["plain"])

    [letter] = DeadLetter.objects.all()
    assert (letter.reason, letter.tags, letter.keys) == ("apply_failed", [], [])
    assert len(letter.drains) == 1 and ":ci:d:" in letter.drains[0]
    assert "can't run this command" in letter.last_error
    assert cache.get("small") is None  # what succeeded is not redone
    left = admin.scard(letter.drains[0])
    assert 0 < left <= 500  # still waiting to be drained

    admin.execute_command("ACL", "SETUSER", "app", "+spop")
    assert replay("--id", str(letter.pk))[0] == 0
    assert not admin.exists(letter.drains[0])
    assert all(cache.get(f"member:{i}") is None for i in range(500))


def test_models_affected_names_only_declared_models():
    """The column is an admin filter: a message's made-up entity types must not become
    choices of it."""
    from cache_invalidation import InvalidationEvent

    events = [InvalidationEvent(type="x.updated", entity_type=f"evil.Model{i}") for i in range(3)]
    events += [InvalidationEvent(type="shop.Product.updated", entity_type="shop.Product"),
               InvalidationEvent(type="manual")]
    letter = deadletter.record(events, "apply_failed", "boom")
    assert letter.models_affected == "manual,shop.Product,unknown"
