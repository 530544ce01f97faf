"""A careless operator: values no command or form should turn into a traceback, and pattern
confirmations that must not reach further than their preview.

Everything runs the real commands (``call_command``) and the real admin page against the
suite's Redis and database (SQLite, or PostgreSQL with ``DATABASE_URL``, where a NUL character
in a text column is an error of the database itself).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from cache_invalidation.models import ManualInvalidation
from tests.faults import row

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PAGE = "/admin/cache_invalidation/manualinvalidation/invalidate/"


@pytest.fixture
def operator(client: Client) -> User:
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    for codename in ("invalidate_cache", "view_manualinvalidation"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


# -- values that used to raise a traceback ----------------------------------------------------
@row(
    "A NUL character (\\x00) in the admin form's tags, keys, pattern or primary key (issue 13, 10)",
    "POST the manual invalidation form with a NUL in one field (PostgreSQL refuses NUL in text "
    "and jsonb)",
    "a form error on that field (no 500) and a refused audit row with the NUL written as \\x00",
)
@pytest.mark.parametrize(
    "form",
    [
        {"tags": "shelf\x00"},
        {"keys": "a\x00b"},
        {"pattern": "report:\x00*"},
        {"model": "shop.Product", "pk": "1\x00"},
    ],
    ids=["tags", "keys", "pattern", "pk"],
)
def test_a_nul_character_is_a_form_error_and_an_audit_row(client, operator, form):
    response = client.post(PAGE, {**form, "_invalidate": "1"})
    assert response.status_code == 200
    field = next(iter(form)) if "pk" not in form else "pk"
    assert response.context["form"].errors[field] == ["Null characters are not allowed."]
    audit = ManualInvalidation.objects.get()
    assert audit.status == "refused" and audit.error == "Null characters are not allowed."
    stored = {"tags": audit.tags, "keys": audit.keys, "pattern": audit.pattern,
              "pk": audit.object_pk}[field]
    assert "\\x00" in str(stored) and "\x00" not in str(stored)


@row(
    "A NUL character in an admin list's filter or search (issue 13, 10)",
    "GET the dead-letter, outbox and audit lists with ``?status=%00``, ``?q=%00`` and the like "
    "(PostgreSQL refuses NUL in text)",
    "Django's answer to a bad lookup (a redirect to ``?e=1``, then its \"Database error\" page) "
    "or the list itself; never a 500",
)
@pytest.mark.parametrize(
    "url",
    [
        "/admin/cache_invalidation/deadletter/?status=%00",
        "/admin/cache_invalidation/deadletter/?reason=a%00b",
        "/admin/cache_invalidation/deadletter/?q=%00",
        "/admin/cache_invalidation/outboxevent/?q%00=1",
        "/admin/cache_invalidation/manualinvalidation/?status=%00",
        "/admin/cache_invalidation/manualinvalidation/?source=%00&q=x",
    ],
)
def test_a_nul_character_in_an_admin_list_is_no_500(client, url):
    client.force_login(User.objects.create_superuser("root", password="pw"))
    response = client.get(url, follow=True)
    assert response.status_code == 200
    final = response.redirect_chain[-1][0] if response.redirect_chain else url
    assert final.endswith("?e=1"), final


@row(
    "A NUL character in ``invalidate_cache``'s ``--tag``, ``--pattern`` or ``--pk`` "
    "(issue 13, 10)",
    "call_command with a NUL in one option (the shell cannot pass one; a wrapper script can)",
    "exit code 2 naming the field; a refused audit row with the NUL written as \\x00",
)
@pytest.mark.parametrize(
    ("options", "field"),
    [({"tags": ["shelf\x00"]}, "tags"), ({"pattern": "report:\x00*"}, "pattern"),
     ({"model": "shop.Product", "pk": "1\x00"}, "pk")],
    ids=["tags", "pattern", "pk"],
)
def test_a_nul_character_in_invalidate_cache_exits_2(options, field):
    with pytest.raises(CommandError) as info:
        call_command("invalidate_cache", stdout=io.StringIO(), no_input=True, **options)
    assert info.value.returncode == 2
    assert str(info.value) == (
        f"The {field} field holds a NUL character (\\x00); no cache key, tag or database row "
        "can hold one. Remove it."
    )
    audit = ManualInvalidation.objects.get()
    assert audit.status == "refused" and "\x00" not in audit.error


BIG = str(2**64)


@row(
    "Out-of-range command options (issue 13, 10)",
    "``replay_dead_letters --older-than 9999999999d`` / ``999999999d`` / ``--id 2**64`` / "
    "``--limit 2**64``; ``relay_outbox --interval -5 --loop``, ``--interval nan``/``inf``, "
    "``--limit 2**64``, ``--database nope``",
    "exit code 2 and a message naming the option and the bad value; no traceback, nothing "
    "replayed or relayed",
)
@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        ("replay_dead_letters", ["--older-than", "9999999999d"],
         "--older-than '9999999999d' reaches before the year 1; give a shorter duration."),
        ("replay_dead_letters", ["--older-than", "999999999d"],
         "--older-than '999999999d' reaches before the year 1; give a shorter duration."),
        ("replay_dead_letters", ["--id", BIG],
         f"--id must be a positive number up to {2**63 - 1}, got {BIG}."),
        ("replay_dead_letters", ["--all", "--limit", BIG],
         f"--limit must be a positive number up to {2**63 - 1}, got {BIG}."),
        ("relay_outbox", ["--interval", "-5", "--loop"],
         "--interval must be a number of seconds above 0 and at most 86400, got -5.0."),
        ("relay_outbox", ["--interval", "nan", "--loop"],
         "--interval must be a number of seconds above 0 and at most 86400, got nan."),
        ("relay_outbox", ["--interval", "inf", "--loop"],
         "--interval must be a number of seconds above 0 and at most 86400, got inf."),
        ("relay_outbox", ["--limit", BIG],
         f"--limit must be a positive number up to {2**63 - 1}, got {BIG}."),
        ("relay_outbox", ["--database", "nope"],
         "--database 'nope' is not a database alias; choose one of: default, other."),
    ],
    ids=["older-than-overflow", "older-than-before-year-1", "id", "replay-limit",
         "negative-interval", "nan-interval", "inf-interval", "relay-limit", "database"],
)
def test_out_of_range_options_exit_2_naming_the_value(command, argv, message):
    with pytest.raises(CommandError) as info:
        call_command(command, *argv, stdout=io.StringIO(), stderr=io.StringIO())
    assert info.value.returncode == 2
    assert str(info.value) == message


# -- pattern deletion: a confirmation reaches no further than its preview ---------------------
@pytest.fixture
def reports() -> None:
    for n in (1, 2, 3):
        cache.set(f"report:{n}", n)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@row(
    "Keys added between a pattern's preview and its confirmation; the same confirmation "
    "posted twice (issue 13, 9)",
    "the admin page previews ``report:*`` (3 keys), 5,000 matching keys are written, the "
    "operator confirms; then the same token is posted again after ``report:1`` is written again",
    "the confirmation deletes the 3 previewed keys and none of the 5,000; the second post "
    "deletes nothing, says the confirmation was already used and previews again",
)
def test_a_confirmation_deletes_only_what_it_previewed_and_only_once(client, operator, reports):
    form = {"pattern": "report:*", "_invalidate": "1"}
    preview = client.post(PAGE, form)
    assert preview.context["preview"]["matched"] == 3
    token = preview.context["preview"]["token"]
    cache.set_many({f"report:late:{n}": n for n in range(5000)})

    done = client.post(PAGE, {**form, "confirm": token}, follow=True)
    assert messages_of(done) == ["Deleted 3 keys matching report:*."]
    assert [cache.get(f"report:{n}") for n in (1, 2, 3)] == [None, None, None]
    assert len(cache.get_many([f"report:late:{n}" for n in range(5000)])) == 5000
    assert ManualInvalidation.objects.filter(status="applied").get().deleted_count == 3

    cache.set("report:1", 1)
    again = client.post(PAGE, {**form, "confirm": token})
    assert messages_of(again) == [
        "This confirmation was already used or its preview expired; check the preview and "
        "confirm again."]
    assert again.context["preview"]["matched"] == 5001  # a new preview, to confirm anew
    assert cache.get("report:1") == 1
    assert ManualInvalidation.objects.filter(status="applied").count() == 1


class _Terminal(io.StringIO):
    """An operator at a terminal who answers "y" after someone else wrote more keys."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        super().__init__("y\n")
        self.meanwhile = meanwhile

    def isatty(self) -> bool:
        return True

    def readline(self, *args: Any) -> str:
        self.meanwhile()
        return super().readline(*args)


@row(
    "Keys added while ``invalidate_cache --pattern`` waits for its y/N answer (issue 13, 9)",
    "the command previews ``report:*`` (3 keys) and asks; before the answer 200 matching keys "
    "are written; the operator answers y",
    "the 3 previewed keys are deleted, the 200 new ones are not; the command says 3",
)
def test_invalidate_cache_deletes_only_the_keys_it_asked_about(reports):
    late = {f"report:late:{n}": n for n in range(200)}
    out = io.StringIO()
    call_command("invalidate_cache", pattern="report:*", stdout=out,
                 stdin=_Terminal(lambda: cache.set_many(late)))
    assert "Delete 3 key(s) matching 'report:*'" in out.getvalue()
    assert "Deleted 3 key(s) matching 'report:*'." in out.getvalue()
    assert cache.get("report:2") is None
    assert len(cache.get_many(list(late))) == 200
