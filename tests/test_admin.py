"""Admin for the dead-letter queue: replay and discard, only with the permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User

from cache_invalidation import InvalidationEvent, deadletter
from cache_invalidation.models import DeadLetter

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/admin/cache_invalidation/deadletter/"


@pytest.fixture
def letter():
    event = InvalidationEvent(type="manual", tags=("admin-tag",))
    return deadletter.record([event], DeadLetter.Reason.PUBLISH_FAILED, "broker down")


def staff(client, *perms):
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    for codename in ("view_deadletter", *perms):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


def test_replay_action_with_permission(client, letter):
    staff(client, "replay_deadletter")
    page = client.get(URL)
    assert b"replay_selected" in page.content
    response = client.post(URL, {"action": "replay_selected", "_selected_action": [letter.pk]},
                           follow=True)
    assert [str(m) for m in response.context["messages"]] == ["Replayed 1 dead letter."]
    letter.refresh_from_db()
    assert letter.status == "replayed"


def test_replay_is_hidden_and_refused_without_permission(client, letter):
    staff(client)
    page = client.get(URL)
    assert page.status_code == 200
    assert b"replay_selected" not in page.content
    client.post(URL, {"action": "replay_selected", "_selected_action": [letter.pk]})
    letter.refresh_from_db()
    assert letter.status == "pending"


def test_detail_shows_pretty_event_json_and_is_read_only(client, letter):
    staff(client)
    page = client.get(f"{URL}{letter.pk}/change/")
    assert page.status_code == 200
    assert b"&quot;admin-tag&quot;" in page.content and b"<pre>" in page.content
    assert client.post(f"{URL}{letter.pk}/change/", {"status": "replayed"}).status_code == 403


def test_discard_action(client, letter):
    staff(client, "replay_deadletter")
    client.post(URL, {"action": "discard_selected", "_selected_action": [letter.pk]})
    letter.refresh_from_db()
    assert letter.status == "discarded"
