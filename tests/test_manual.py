"""Manual invalidation: the pattern guard, row resolution and ``manage.py invalidate_cache``."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache, caches
from django.core.management import call_command
from django.core.management.base import CommandError

from cache_invalidation import keypatterns, manual, no_invalidation, tagged_cache
from cache_invalidation.management.commands.invalidate_cache import Command
from cache_invalidation.models import DeadLetter, ManualInvalidation, OutboxEvent
from testproject.shop.models import Category, Product
from tests.conftest import _free_port

pytestmark = pytest.mark.django_db(transaction=True)
PREFIX = django_settings.KEY_PREFIX


def run(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    extra = {"stdin": stdin} if stdin is not None else {}
    try:
        call_command("invalidate_cache", *args, stdout=out, stderr=err, **extra)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def product():
    with no_invalidation():
        lamps = Category.objects.create(name="Lamps", slug="lamps")
        return Product.objects.create(name="Arc", price=Decimal("89.00"), category=lamps)


@pytest.fixture
def reports(redis_client):
    """Three keys matching ``report:*`` and neighbours that must survive a delete of it."""
    for n in (1, 2, 3):
        cache.set(f"report:{n}", n)
    cache.set("reports-archive", "keep")            # same prefix, does not match
    cache.set("report:1", "v2", version=2)          # same prefix, other version
    outside = [f"{PREFIX}-other:1:report:1", f"{PREFIX}x:1:report:9"]
    for key in outside:                             # other prefixes sharing our first letters
        redis_client.set(key, "keep")
    return outside


# -- the pattern guard ------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["*", "**", "?", "*:*", ":", "?*?"])
def test_patterns_of_wildcards_only_are_refused(pattern):
    with pytest.raises(keypatterns.PatternError) as info:
        keypatterns.check_pattern(pattern)
    assert str(info.value) == (
        f"The pattern {pattern!r} would match every key of the cache; include literal text, "
        "such as product:*:page."
    )


def test_bare_star_message_is_exact():
    with pytest.raises(keypatterns.PatternError) as info:
        keypatterns.check_pattern("*")
    assert str(info.value) == (
        "The pattern '*' would match every key of the cache; include literal text, such as "
        "product:*:page."
    )


@pytest.mark.parametrize("pattern,char", [
    ("report:[ab]", "["), ("report]", "]"), ("report\\*", "\\"), ("report *", " "),
    ("report:\n", "\n"), ("report\x00", "\x00"),
])
def test_classes_escapes_spaces_and_control_characters_are_refused(pattern, char):
    with pytest.raises(keypatterns.PatternError) as info:
        keypatterns.check_pattern(pattern)
    assert str(info.value) == (
        f"The pattern {pattern!r} contains {char!r}: the only wildcards are * and ?; [, ], "
        "backslashes, spaces and control characters are not allowed."
    )


def test_empty_long_and_internal_patterns_are_refused():
    cases = {
        "": "Enter a key pattern.",
        "a" * 201: "The pattern is 201 characters long; at most 200 are allowed.",
        "ci:*": "The pattern 'ci:*' names the app's own bookkeeping keys (ci:...), which are "
                "never deleted by pattern.",
    }
    for pattern, message in cases.items():
        with pytest.raises(keypatterns.PatternError) as info:
            keypatterns.check_pattern(pattern)
        assert str(info.value) == message


def test_a_pattern_that_already_carries_the_prefix_is_refused():
    with pytest.raises(keypatterns.PatternError) as info:
        keypatterns.bind(f"{PREFIX}:1:report:*")
    assert str(info.value) == (
        "Write the pattern as your code names the keys, without the cache's prefix: "
        f"'{PREFIX}:1:report:*' starts with '{PREFIX}:1:', which is added for you."
    )


def test_patterns_need_django_redis():
    with pytest.raises(keypatterns.PatternError) as info:
        keypatterns.bind("report:*", alias="locmem")
    assert str(info.value) == (
        "Key patterns need a django-redis cache; the cache 'locmem' is a LocMemCache."
    )


def test_the_glob_is_the_escaped_prefix_plus_the_pattern():
    bound = keypatterns.bind("report:*")
    assert bound.glob == f"{PREFIX}:1:report:*"
    assert bound.logical(f"{PREFIX}:1:report:7".encode()) == "report:7"
    assert bound.logical(f"{PREFIX}:1:ci:t:x".encode()) is None
    assert bound.logical(f"{PREFIX}-other:1:report:7".encode()) is None


def test_glob_characters_in_the_key_prefix_are_taken_literally(settings, redis_client):
    odd = f"{PREFIX}[x]"
    settings.CACHES = {**settings.CACHES, "odd": {**settings.CACHES["default"],
                                                  "KEY_PREFIX": odd}}
    caches["odd"].set("report:1", 1)
    redis_client.set(f"{PREFIX}x:1:report:1", "keep")  # what an unescaped [x] would match
    bound = keypatterns.bind("report:*", alias="odd")
    assert bound.glob == f"{PREFIX}\\[x\\]:1:report:*"
    preview = bound.preview()
    assert preview.matched == 1
    assert bound.delete(preview.keys) == 1
    assert caches["odd"].get("report:1") is None
    assert redis_client.get(f"{PREFIX}x:1:report:1") == b"keep"


def test_the_apps_own_keys_never_match(redis_client):
    tagged_cache.set("cart:1", "full", tags=["cart"])
    tagged_cache.invalidate_tags(["other"])  # writes ci:seq and a version
    internal = [k for k in redis_client.scan_iter(match=f"{PREFIX}:1:ci:*")]
    assert internal
    bound = keypatterns.bind("c*")
    preview = bound.preview()
    assert (preview.matched, preview.sample) == (1, ("cart:1",))
    assert bound.delete([*preview.keys, *internal]) == 1  # even when handed them
    assert all(redis_client.exists(k) for k in internal)


def test_too_broad_patterns_are_refused_for_deletion(monkeypatch):
    monkeypatch.setattr(keypatterns, "MAX_MATCHES", 2)
    for n in range(3):
        cache.set(f"report:{n}", n)
    bound = keypatterns.bind("report:*")
    preview = bound.preview()
    assert preview.too_broad
    assert bound.refusal(preview) == (
        "The pattern 'report:*' matches more than 2 keys; narrow it, or invalidate a tag."
    )


# -- rows -------------------------------------------------------------------------------------
def test_a_row_resolves_to_what_its_save_would_invalidate(product):
    tags, keys = manual.resolve_row("shop.Product", str(product.pk))
    c, p = product.category_id, product.pk
    assert set(tags) == {f"product:{p}", f"category:{c}:products", f"pricing:{c}",
                         f"product:{p}:tags", f"shop.Product:{p}", "shop.Product:*",
                         f"shop.Product:category_id={c}"}
    assert keys == [f"product:{p}:detail"]


def test_row_errors_name_the_problem(product):
    cases = [
        (("shop.Prodcut", "1"),
         "'shop.Prodcut' is not a model that declares cache_invalidation. Did you mean "
         "shop.Product?"),
        (("shop.Product", "abc"), "'abc' is not a valid primary key for shop.Product."),
        (("shop.Product", "999999"), "shop.Product with primary key '999999' does not exist."),
        (("shop.Product", ""), "Give the primary key of the shop.Product row."),
    ]
    for (label, pk), message in cases:
        with pytest.raises(manual.ManualError) as info:
            manual.resolve_row(label, pk)
        assert str(info.value) == message


# -- the command ------------------------------------------------------------------------------
def test_tags_and_keys_through_the_transport(product):
    tagged_cache.set("shelf", "x", tags=["shelf"])
    cache.set("banner", "x")
    code, out, _ = run("--tag", "shelf", "--key", "banner")
    assert code == 0
    assert out.strip() == Command.APPLIED.format(
        tags=1, keys=1, how="through the 'sync' transport", deleted=2)
    assert tagged_cache.get("shelf") is None and cache.get("banner") is None
    row = ManualInvalidation.objects.get()
    assert (row.source, row.status, row.tags, row.keys, row.dry_run, row.deleted_count) == (
        "command", "applied", ["shelf"], ["banner"], False, 2)
    assert row.event_id


def test_sync_applies_in_this_process():
    tagged_cache.set("shelf", "x", tags=["shelf"])
    code, out, _ = run("--tag", "shelf", "--sync")
    assert (code, out.strip()) == (0, Command.APPLIED.format(tags=1, keys=0, how="now",
                                                             deleted=1))
    assert tagged_cache.get("shelf") is None


def test_published_when_the_transport_takes_it_over(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox", "OUTBOX_DELIVER_ON_COMMIT": False}
    tagged_cache.set("shelf", "x", tags=["shelf"])
    code, out, _ = run("--tag", "shelf")
    event_id = ManualInvalidation.objects.get().event_id
    assert (code, out.strip()) == (0, Command.PUBLISHED.format(
        tags=1, keys=0, transport="outbox", event_id=event_id))
    assert ManualInvalidation.objects.get().status == "published"
    assert OutboxEvent.objects.get().event["id"] == event_id
    assert tagged_cache.get("shelf") == "x"  # until the relay delivers it


def test_model_and_pk_dry_run_tells_the_truth(product):
    cache.set(f"product:{product.pk}:detail", "old")
    code, out, _ = run("--model", "shop.Product", "--pk", str(product.pk), "--dry-run")
    assert (code, out.strip()) == (0, Command.WOULD.format(tags=7, keys=1, matches=""))
    assert cache.get(f"product:{product.pk}:detail") == "old"
    row = ManualInvalidation.objects.get()
    assert (row.status, row.dry_run, row.model_label, row.object_pk) == (
        "previewed", True, "shop.Product", str(product.pk))


def test_model_and_pk_invalidate_the_rows_entries(product):
    cache.set(f"product:{product.pk}:detail", "old")
    code, out, _ = run("--model", "shop.Product", "--pk", str(product.pk), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["status"] == "applied"
    assert f"product:{product.pk}" in summary["tags"]
    assert summary["keys"] == [f"product:{product.pk}:detail"]
    assert cache.get(f"product:{product.pk}:detail") is None


@pytest.mark.parametrize("args,message", [
    ((), "Say what to invalidate: tags, keys, a model and primary key, or a key pattern."),
    (("--model", "shop.Product"), Command.MODEL_AND_PK),
    (("--pk", "3"), Command.MODEL_AND_PK),
    (("--model", "shop.Product", "--pk", "424242"),
     "shop.Product with primary key '424242' does not exist."),
    (("--model", "nope.Thing", "--pk", "1"),
     "'nope.Thing' is not a model that declares cache_invalidation. Declared models: "),
    (("--pattern", "*"),
     "The pattern '*' would match every key of the cache; include literal text, such as "
     "product:*:page."),
    (("--pattern", ""), "Enter a key pattern."),
])
def test_bad_usage_exits_2_with_a_message_and_an_audit_row(args, message):
    code, out, error = run(*args)
    assert code == 2
    assert error.startswith(message)
    row = ManualInvalidation.objects.get()
    assert (row.source, row.status) == ("command", "refused")
    assert row.error.startswith(message)


def test_pattern_dry_run_counts_and_deletes_nothing(reports, redis_client):
    code, out, _ = run("--pattern", "report:*", "--dry-run")
    assert (code, out.strip()) == (0, "Would invalidate 0 tag(s), 0 key(s); pattern "
                                      "'report:*' matches 3 key(s).")
    assert [cache.get(f"report:{n}") for n in (1, 2, 3)] == [1, 2, 3]
    assert ManualInvalidation.objects.get().matched_count == 3


def test_pattern_needs_no_input_when_stdin_is_not_a_terminal(reports):
    code, _, error = run("--pattern", "report:*", stdin=io.StringIO("y\n"))
    assert (code, error) == (2, Command.NEED_NO_INPUT.format(matched=3, pattern="report:*"))
    assert cache.get("report:1") == 1


def test_pattern_asks_on_a_terminal(reports):
    code, out, _ = run("--pattern", "report:*", stdin=Terminal("n\n"))
    assert code == 0
    assert out == Command.CONFIRM.format(matched=3, pattern="report:*", alias="default") \
        + Command.CANCELLED + "\n"
    assert cache.get("report:1") == 1
    code, out, _ = run("--pattern", "report:*", stdin=Terminal("y\n"))
    assert code == 0 and out.endswith(Command.PATTERN_DELETED.format(
        count=3, pattern="report:*") + "\n")
    assert cache.get("report:1") is None


def test_pattern_deletes_exactly_its_keys(reports, redis_client):
    code, out, _ = run("--pattern", "report:*", "--no-input")
    assert (code, out.strip()) == (0, "Deleted 3 key(s) matching 'report:*'.")
    assert [cache.get(f"report:{n}") for n in (1, 2, 3)] == [None, None, None]
    assert cache.get("reports-archive") == "keep"
    assert cache.get("report:1", version=2) == "v2"
    assert [redis_client.get(k) for k in reports] == [b"keep", b"keep"]
    row = ManualInvalidation.objects.get()
    assert (row.status, row.pattern, row.matched_count, row.deleted_count) == (
        "applied", "report:*", 3, 3)


@pytest.fixture
def cache_down(settings):
    settings.CACHES = {**settings.CACHES, "default": {
        **settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{_free_port()}/0"}}


def test_cache_down_exits_1(cache_down):
    code, _, error = run("--tag", "shelf", "--sync")
    assert code == 1
    assert error.startswith("Invalidation failed: Invalidating 1 tag(s) and 0 key(s) now "
                            "failed: ConnectionError")
    assert ManualInvalidation.objects.get().status == "failed"


def test_cache_down_through_the_transport_exits_1_and_dead_letters(cache_down):
    code, _, error = run("--tag", "shelf")
    assert code == 1
    assert error.startswith("Invalidation failed: Invalidating 1 tag(s) and 0 key(s) through "
                            "'sync' failed and was dead-lettered: ConnectionError")
    letter = DeadLetter.objects.get()
    assert letter.tags == ["shelf"]
    assert letter.event_ids == [ManualInvalidation.objects.get().event_id]


def test_cache_down_while_counting_exits_1(cache_down):
    code, _, error = run("--pattern", "report:*", "--dry-run")
    assert code == 1
    assert error.startswith("Could not count the keys matching 'report:*': ConnectionError")
    assert ManualInvalidation.objects.get().status == "failed"


@pytest.mark.django_db(transaction=True)
def test_the_apps_own_keys_cannot_be_invalidated_as_plain_keys(settings):
    """ci:... holds the tag index, versions, the sequence, leases and counters: deleting one as a
    plain key would at best force recomputations and at worst lose a count. Refused, loudly."""
    from cache_invalidation import invalidate

    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync"}
    tagged_cache.invalidate_tags(["warm"])  # the sequence exists
    before = cache.client.get_client().get(cache.make_key("ci:seq"))
    with pytest.raises(ValueError) as raised:
        invalidate(keys=["page", "ci:seq"])
    assert str(raised.value) == (
        "invalidate(): the key 'ci:seq' is in the app's own namespace (ci:...: tag index, "
        "versions, sequence, leases, counters); it is never deleted as a plain key. "
        "Invalidate the tag instead."
    )
    with pytest.raises(manual.ManualError) as refused:
        manual.plan(keys="page\nci:t:product:1")
    assert refused.value.field == "keys"
    assert str(refused.value) == (
        "The key 'ci:t:product:1' is in the app's own namespace (ci:...: tag index, versions, "
        "sequence, leases, counters) and is never deleted as a plain key; invalidate a tag "
        "instead."
    )
    assert cache.client.get_client().get(cache.make_key("ci:seq")) == before
    invalidate(tags=["ci:seq"])  # a tag of that name is only a tag: allowed
