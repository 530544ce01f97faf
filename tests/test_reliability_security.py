"""Security: every operator surface (admin pages, actions, the metrics view, commands) asks for
the right person, the right permission, a POST with its CSRF token, and cannot reach past the
cache's own keys. One sweep over all of them, so a page added later without a guard fails here.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache as plain_cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cache_invalidation import InvalidationEvent, deadletter, metrics
from cache_invalidation.models import DeadLetter, ManualInvalidation, OutboxEvent
from tests.faults import examples, row

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

ADMIN = "/admin/cache_invalidation/"
PAGE = ADMIN + "manualinvalidation/invalidate/"
PREFIX = django_settings.KEY_PREFIX


@pytest.fixture
def letter() -> DeadLetter:
    row = deadletter.record([InvalidationEvent(type="manual", tags=("secured",))],
                            DeadLetter.Reason.PUBLISH_FAILED, "broker down")
    metrics.flush()  # its counts are written now, not by the first page that reads them
    return row


def pages(letter: DeadLetter) -> list[str]:
    """Every admin page of the app: lists, details, the manual invalidation page."""
    return [
        ADMIN,
        ADMIN + "deadletter/",
        ADMIN + f"deadletter/{letter.pk}/change/",
        ADMIN + "outboxevent/",
        ADMIN + "manualinvalidation/",
        PAGE,
    ]


def user(*codenames: str, staff: bool = True, superuser: bool = False) -> User:
    account = User.objects.create_user(f"u{User.objects.count()}", password="pw",
                                       is_staff=staff, is_superuser=superuser)
    for codename in codenames:
        account.user_permissions.add(Permission.objects.get(codename=codename))
    return account


def logged_in(account: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(account)
    return client


def state(redis_client: Any) -> dict[str, Any]:
    """Everything an operator surface could change: rows and this run's Redis keys."""
    keys = sorted(redis_client.scan_iter(match=f"{PREFIX}*", count=1000))
    return {
        "letters": list(DeadLetter.objects.values_list("pk", "status", "attempts")),
        "outbox": OutboxEvent.objects.count(),
        "audit": ManualInvalidation.objects.count(),
        "redis": {k: redis_client.dump(k) for k in keys},
    }


@row("Admin pages asked for by an anonymous visitor",
     "GET of every page of the app's admin (dead letters list and detail, outbox, audit log, "
     "the Cache invalidation page) without logging in",
     "each redirects to the admin login page")
def test_anonymous_visitors_are_sent_to_the_login_page(client, letter):
    for url in pages(letter):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/?next="), url


@row("Staff without the app's permissions",
     "a staff user with no permission GETs every page of the app's admin",
     "403 on each (the app index lists nothing); the Cache invalidation page needs "
     "invalidate_cache, the dead-letter actions replay_deadletter")
def test_staff_without_permissions_get_403(letter):
    client = logged_in(user())
    for url in pages(letter):
        assert client.get(url).status_code in (403, 404), url
    assert client.get(PAGE).status_code == 403
    viewer = logged_in(user("view_deadletter", "view_manualinvalidation"))
    assert viewer.get(PAGE).status_code == 403  # seeing the log is not invalidating


@row("GET requests that look like submissions",
     "a superuser GETs every page, with query strings carrying tags, keys, a pattern, a "
     "confirmation, an admin action and selected rows",
     "nothing changes: dead letters, outbox rows, audit rows and every Redis key of the run "
     "are byte for byte the same")
def test_get_never_changes_state(letter, redis_client):
    plain_cache.set("report:1", "keep")
    plain_cache.set("product:1:page", "keep")
    client = logged_in(user(superuser=True))
    before = state(redis_client)
    query = ("?tags=secured&keys=report:1&pattern=report:*&apply_now=on&_preview=1"
             f"&confirm=x&action=replay_selected&_selected_action={letter.pk}&scan_index=1")
    for url in pages(letter):
        assert client.get(url + query).status_code in (200, 302), url
    assert state(redis_client) == before


@row("POST without the CSRF token",
     "a logged-in superuser (Client(enforce_csrf_checks=True)) POSTs the Cache invalidation "
     "form, the replay and discard actions and a dead letter's delete page",
     "403 for each; nothing is invalidated, replayed, discarded or deleted")
def test_post_without_csrf_is_refused(letter, redis_client):
    plain_cache.set("report:1", "keep")
    client = logged_in(user(superuser=True), enforce_csrf_checks=True)
    before = state(redis_client)
    posts = [
        (PAGE, {"tags": "secured", "keys": "report:1", "apply_now": "on"}),
        (ADMIN + "deadletter/", {"action": "replay_selected", "_selected_action": letter.pk}),
        (ADMIN + "deadletter/", {"action": "discard_selected", "_selected_action": letter.pk}),
        (ADMIN + f"deadletter/{letter.pk}/delete/", {"post": "yes"}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    assert state(redis_client) == before


@row("Dead-letter actions without the permission",
     "a staff user who may view dead letters but not replay them opens the list and POSTs "
     "the replay and discard actions (with a valid CSRF token)",
     "the actions are not offered and the POSTs do nothing: the dead letter stays pending")
def test_actions_are_hidden_and_refused_without_permission(letter):
    client = logged_in(user("view_deadletter"))
    page = client.get(ADMIN + "deadletter/")
    assert page.status_code == 200
    offered = [name for name, _ in page.context["action_form"].fields["action"].choices] \
        if page.context.get("action_form") else []
    assert "replay_selected" not in offered and "discard_selected" not in offered
    for action in ("replay_selected", "discard_selected"):
        client.post(ADMIN + "deadletter/", {"action": action, "_selected_action": letter.pk})
    letter.refresh_from_db()
    assert (letter.status, letter.attempts) == ("pending", 1)


@row("The metrics view without staff status or the token",
     "GET /cache-invalidation/metrics/ anonymously, as a non-staff user, with a wrong bearer "
     "token, and POST as staff",
     "403 for each (405 for the POST); staff and the right token get the metrics")
def test_metrics_view_is_guarded(settings):
    pytest.importorskip("prometheus_client")
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "METRICS_TOKEN": "s3cret-token-123456"}
    url = "/cache-invalidation/metrics/"
    assert Client().get(url).status_code == 403
    assert logged_in(user(staff=False)).get(url).status_code == 403
    assert Client().get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    staff = logged_in(user())
    assert staff.post(url).status_code == 405
    assert staff.get(url).status_code == 200
    assert Client().get(url, HTTP_AUTHORIZATION="Bearer s3cret-token-123456").status_code == 200


# -- patterns and commands --------------------------------------------------------------------
def invalidate_cache(*args: str, stdin: Any = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    extra = {"stdin": stdin} if stdin is not None else {}
    try:
        call_command("invalidate_cache", *args, stdout=out, stderr=err, **extra)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


OUTSIDE = {  # raw Redis keys that no pattern of this cache may ever delete
    f"{PREFIX}-other:1:report:1": b"other application",
    f"{PREFIX}x:1:report:2": b"a prefix sharing our first letters",
    f"{PREFIX}:2:report:1": b"our prefix, another VERSION",
    f"other:{PREFIX}:1:report:3": b"our prefix in the middle of another key",
}
INSIDE_KEEP = ("ci:seq", "ci:t:report", "ci:v:report")  # the app's own bookkeeping


patterns = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="*?[]\\:{}^!-reportcix1 \n", max_size=12),
    st.sampled_from(["*", "**", "*:*", "?", "report:*", "report:?", "*report*", "ci:*",
                     "*ci:*", "[r]eport:*", "report\\:*", f"{PREFIX}:1:*", f"{PREFIX}*",
                     ":1:*", "*:1:*", "*-other:*", "../*", "\\*", "report:*\x00", "ü*"]),
)


@row("Pattern invalidation aimed outside the cache's keys",
     "Hypothesis: patterns with *, ?, [ ], backslashes, colons, the prefix itself, ci:, "
     "control and non-ASCII characters, through manage.py invalidate_cache --pattern "
     "--no-input; another application's keys, another prefix and another VERSION share the "
     "Redis database",
     "a pattern is refused with a clear error or deletes only this cache's own matching keys: "
     "keys of other prefixes, versions and the app's ci: bookkeeping always survive")
@hypothesis_settings(max_examples=examples(60), deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=patterns)
def test_patterns_cannot_escape_the_key_prefix(redis_client, pattern):
    redis_client.mset(OUTSIDE)
    try:
        plain_cache.set("report:1", "mine")
        for key in INSIDE_KEEP:
            redis_client.set(f"{PREFIX}:1:{key}", b"bookkeeping")
        code, out, err = invalidate_cache("--pattern", pattern, "--no-input", "--json")
        if code:
            assert err and code in (1, 2), (pattern, code, err)
        else:
            assert json.loads(out)
        assert {k: redis_client.get(k) for k in OUTSIDE} == OUTSIDE
        for key in INSIDE_KEEP:
            assert redis_client.get(f"{PREFIX}:1:{key}") == b"bookkeeping", (pattern, key)
    finally:
        redis_client.delete(*OUTSIDE)


@row("Destructive commands run without a terminal",
     "manage.py invalidate_cache --pattern with stdin that is not a TTY (cron, CI), then with "
     "--no-input",
     "without --no-input it exits non-zero with the message saying to pass --no-input and "
     "deletes nothing; with --no-input it deletes the matches")
def test_commands_refuse_destructive_work_without_no_input():
    for n in (1, 2):
        plain_cache.set(f"report:{n}", n)
    code, _, message = invalidate_cache("--pattern", "report:*", stdin=io.StringIO("y\n"))
    assert code != 0
    assert "pass --no-input to delete without asking" in message
    assert plain_cache.get("report:1") == 1 and plain_cache.get("report:2") == 2
    code, _, _ = invalidate_cache("--pattern", "report:*", "--no-input")
    assert code == 0
    assert plain_cache.get("report:1") is None and plain_cache.get("report:2") is None
