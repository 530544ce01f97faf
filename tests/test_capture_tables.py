"""Capture sees every table a statement reads; a value never outlives the rows it came from.

Each scenario caches a value through ``tagged_cache.get_or_set`` with automatic capture only
(no explicit tags), writes through the ORM (committed, its invalidation applied by the sync
transport), and asserts the entry is gone and a recomputation sees the write. The scenarios
are those of django-cachalot's and django-cacheops' own write/invalidation suites, transposed.
"""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Subquery

from cache_invalidation import cached, no_invalidation, tagged_cache
from cache_invalidation.capture import capturing
from tests.faults import row
from tests.testapp.models import (
    Brand,
    Card,
    Course,
    Enrollment,
    Item,
    Label,
    Owner,
    TrackedWidget,
    Widget,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world():
    with no_invalidation():
        ann = Owner.objects.create(username="ann")
        bob = Owner.objects.create(username="bob")
        Item.objects.create(owner=ann, name="lamp")
        Item.objects.create(owner=bob, name="desk")
        Card.objects.create(owner=ann, number="1")
        red, blue = Label.objects.create(name="red"), Label.objects.create(name="blue")
        acme = Brand.objects.create(name="acme")
        acme.labels.add(red)
    return {"ann": ann, "bob": bob, "red": red, "blue": blue, "acme": acme}


def stale_after(key, read, write):
    """Cache ``read()``, run ``write()``; return (cached before, cached after, fresh)."""
    before = tagged_cache.get_or_set(key, read)
    assert tagged_cache.get(key) == before  # stored
    write()
    return before, tagged_cache.get(key), read()


def rename(owner, name):
    def write():
        owner.username = name
        owner.save()

    return write


# 1. Joins the compiler adds after the queryset was built.

JOINED_READS = {
    "order_by a relation": lambda: list(
        Item.objects.order_by("owner__username").values_list("name", flat=True)
    ),
    "order_by an F() of a relation": lambda: list(
        Item.objects.order_by(F("owner__username").desc()).values_list("name", flat=True)
    ),
    "values across a relation": lambda: list(Item.objects.values("name", "owner__username")),
    "values_list across a relation, by pk": lambda: list(
        Item.objects.filter(pk=Item.objects.first().pk).values_list("owner__username")
    ),
    "select_related forward": lambda: [
        i.owner.username for i in Item.objects.select_related("owner")
    ],
}


@pytest.mark.parametrize("name", sorted(JOINED_READS))
def test_renaming_a_joined_row_invalidates(world, name):
    before, after, fresh = stale_after(name, JOINED_READS[name], rename(world["ann"], "zed"))
    assert before != fresh
    assert after is None


def test_select_related_reverse_one_to_one_sees_a_new_row(world):
    def read():
        return [
            getattr(getattr(o, "card", None), "number", None)
            for o in Owner.objects.select_related("card").order_by("pk")
        ]

    before, after, fresh = stale_after("cards", read, lambda: Card.objects.create(
        owner=world["bob"], number="2"
    ))
    assert before == ["1", None] and fresh == ["1", "2"]
    assert after is None


@pytest.mark.parametrize(
    "read",
    [
        lambda: Owner.objects.aggregate(n=Count("items"))["n"],
        lambda: sorted(Owner.objects.annotate(n=Count("items")).values_list("username", "n")),
        lambda: Owner.objects.annotate(n=Count("items")).filter(n__gte=2).count(),
    ],
    ids=["aggregate", "annotate", "annotate-count"],
)
def test_aggregates_across_a_relation_see_added_and_removed_rows(world, read):
    before, after, fresh = stale_after(
        "agg", read, lambda: Item.objects.create(owner=world["bob"], name="pen")
    )
    assert before != fresh and after is None
    tagged_cache.get_or_set("agg", read)
    _, after, _ = stale_after("agg", read, lambda: Item.objects.filter(name="pen").delete())
    assert after is None


# 2. Combined querysets: every part counts.


@pytest.mark.parametrize("combinator", ["union", "intersection", "difference"])
def test_combined_querysets_depend_on_every_part(world, combinator):
    def read():
        first = Owner.objects.filter(pk=world["ann"].pk).values_list("username", flat=True)
        second = Owner.objects.filter(items__name="desk").values_list("username", flat=True)
        return sorted(getattr(first, combinator)(second))

    def write():
        Item.objects.filter(name="desk").update(owner=world["ann"])

    before, after, fresh = stale_after(combinator, read, write)
    assert before != fresh
    assert after is None


def test_a_union_of_two_models_is_invalidated_by_the_second(world):
    def read():
        owners = Owner.objects.filter(pk=world["ann"].pk).values_list("pk", flat=True)
        items = Item.objects.filter(name="lamp").order_by().values_list("pk", flat=True)
        return sorted(owners.union(items))

    _, after, _ = stale_after("two", read, lambda: Item.objects.filter(name="lamp").delete())
    assert after is None


# Subqueries, extra() and raw SQL of other models.


SUBQUERY_READS = {
    "Subquery": lambda: list(
        Owner.objects.annotate(
            last=Subquery(
                Item.objects.filter(owner=OuterRef("pk")).order_by("-pk").values("name")[:1]
            )
        ).values_list("username", "last")
    ),
    "Exists": lambda: sorted(
        Owner.objects.filter(Exists(Item.objects.filter(owner=OuterRef("pk"), name="pen")))
        .values_list("username", flat=True)
    ),
    "__in a queryset": lambda: sorted(
        Owner.objects.filter(pk__in=Item.objects.filter(name="pen").values("owner_id"))
        .values_list("username", flat=True)
    ),
    "extra(tables, where)": lambda: sorted(
        Owner.objects.extra(
            tables=["testapp_item"],
            where=["testapp_item.owner_id = testapp_owner.id", "testapp_item.name = 'pen'"],
        ).values_list("username", flat=True)
    ),
    "extra(select)": lambda: sorted(
        Owner.objects.extra(
            select={"n": "SELECT COUNT(*) FROM testapp_item WHERE owner_id = testapp_owner.id"}
        ).values_list("username", "n")
    ),
    "raw()": lambda: sorted(
        o.username
        for o in Owner.objects.raw(
            "SELECT o.id, o.username FROM testapp_owner o JOIN testapp_item i "
            "ON i.owner_id = o.id WHERE i.name = 'pen'"
        )
    ),
    "cursor.execute": lambda: _cursor_count(),
}


def _cursor_count():
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM testapp_item WHERE name = 'pen'")
        return cursor.fetchone()[0]


@pytest.mark.parametrize("name", sorted(SUBQUERY_READS))
def test_reads_of_other_tables_in_subqueries_and_sql_are_captured(world, name):
    before, after, fresh = stale_after(
        name, SUBQUERY_READS[name], lambda: Item.objects.create(owner=world["bob"], name="pen")
    )
    assert before != fresh
    assert after is None


def test_raw_records_its_model(world):
    with capturing() as found:
        list(Owner.objects.raw("SELECT id, username FROM testapp_owner"))
    assert "testapp.Owner:*" in found


# 3. Many-to-many: through tables, fast deletes, through-model writes.


@row("Deleting one side of a many-to-many (fast delete of the through rows)",
     "Brand.delete() while Label.objects.filter(brands=brand) is cached; Django removes the "
     "through rows with a raw delete and sends no signal",
     "the cached labels are invalidated (the through table's tags); no extra query per row")
def test_deleting_one_side_invalidates_reads_across_the_relation(world):
    acme = world["acme"]

    def read():
        return list(Label.objects.filter(brands=acme.pk).values_list("name", flat=True))

    before, after, fresh = stale_after("labels", read, lambda: Brand.objects.get(pk=acme.pk).delete())
    assert before == ["red"] and fresh == []
    assert after is None


def test_reading_the_through_model_directly_is_captured(world):
    through = Brand.labels.through

    def read():
        return through.objects.count()

    _, after, _ = stale_after("n", read, lambda: world["acme"].labels.add(world["blue"]))
    assert after is None


THROUGH_WRITES = {
    "create": lambda w: Brand.labels.through.objects.create(
        brand_id=w["acme"].pk, label_id=w["blue"].pk
    ),
    "bulk_create": lambda w: Brand.labels.through.objects.bulk_create(
        [Brand.labels.through(brand_id=w["acme"].pk, label_id=w["blue"].pk)]
    ),
    "filter().delete()": lambda w: Brand.labels.through.objects.filter(
        brand_id=w["acme"].pk
    ).delete(),
    "update()": lambda w: Brand.labels.through.objects.filter(brand_id=w["acme"].pk).update(
        label_id=w["blue"].pk
    ),
}


@row("Writes through a many-to-many's through model",
     "through.objects.create(), bulk_create([...]), filter().delete() and update() on an "
     "auto-created through model, with a value that read the relation cached",
     "the value and both sides' declared tags (as m2m_changed would name them) are "
     "invalidated; a recomputation sees the write")
@pytest.mark.parametrize("name", sorted(THROUGH_WRITES))
def test_writes_through_the_through_model_invalidate_both_sides(world, name, recorder):
    acme, red, blue = world["acme"], world["red"], world["blue"]

    def read():
        return sorted(acme.labels.values_list("name", flat=True))

    # A declared tag of each side: as m2m_changed would invalidate them.
    tagged_cache.set("declared", "x", tags=[f"brand:{acme.pk}:labels"])
    before, after, fresh = stale_after(name, read, lambda: THROUGH_WRITES[name](world))
    assert before != fresh
    assert after is None
    assert tagged_cache.get("declared") is None
    assert f"brand:{acme.pk}:labels" in recorder.tags
    assert {f"label:{red.pk}", f"label:{blue.pk}"} & recorder.tags


@row("Writes of an explicit through= model that declares nothing",
     "Enrollment.objects.create() and .all().delete() under Course.students "
     "(ManyToManyField(through=...)), with the course's students cached",
     "the cached students and the course's on_fields tag for the relation are invalidated")
def test_an_explicit_through_model_that_declares_nothing_invalidates(world):
    course = Course.objects.create(title="maths")

    def read():
        return sorted(course.students.values_list("username", flat=True))

    tagged_cache.set("declared", "x", tags=[f"course:{course.pk}:students"])
    before, after, fresh = stale_after(
        "students", read, lambda: Enrollment.objects.create(course=course, owner=world["ann"])
    )
    assert before == [] and fresh == ["ann"]
    assert after is None
    assert tagged_cache.get("declared") is None
    _, after, _ = stale_after("students", read, lambda: Enrollment.objects.all().delete())
    assert after is None


# A declared proxy over an undeclared concrete model.


def test_writes_through_the_concrete_model_behind_a_declared_proxy(recorder):
    with no_invalidation():
        widget = Widget.objects.create(name="cog")

    def read():
        return TrackedWidget.objects.get(pk=widget.pk).name

    before, after, fresh = stale_after("w", read, lambda: Widget.objects.filter(
        pk=widget.pk
    ).update(name="gear"))
    assert (before, fresh) == ("cog", "gear")
    assert after is None
    Widget.objects.get(pk=widget.pk).save()
    assert f"widget:{widget.pk}" in recorder.tags  # the proxy's declared tag, too


# 5. Fixtures.


def test_loaddata_invalidates_from_the_rows_own_fields(world, tmp_path, recorder):
    ann = world["ann"]
    by_key = tagged_cache.get_or_set("ann", lambda: Owner.objects.get(pk=ann.pk).username)
    listing = tagged_cache.get_or_set("items", lambda: list(Item.objects.values_list("name")))
    fixture = tmp_path / "data.json"
    fixture.write_text(
        '[{"model": "testapp.owner", "pk": %d, "fields": {"username": "anna"}},'
        ' {"model": "testapp.item", "pk": 999, "fields": {"owner": %d, "name": "new"}}]'
        % (ann.pk, ann.pk)
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert (by_key, listing) != (None, None)
    assert tagged_cache.get("ann") is None
    assert tagged_cache.get("items") is None
    assert f"owner:{ann.pk}" in recorder.tags  # the declared tag, rendered from the fixture
    assert "testapp.Item:owner_id=%d" % ann.pk in recorder.tags


# What must survive: precision is kept where it is safe.


def test_an_unrelated_write_keeps_a_key_lookup_with_a_join(world):
    ann, bob = world["ann"], world["bob"]
    tagged_cache.get_or_set("ann", lambda: Owner.objects.get(pk=ann.pk).username)
    rename(bob, "robert")()
    assert tagged_cache.get("ann") == "ann"


def test_a_filter_on_a_foreign_key_stays_narrow(world):
    ann, bob = world["ann"], world["bob"]
    tagged_cache.get_or_set("ann-items", lambda: list(ann.items.values_list("name", flat=True)))
    Item.objects.create(owner=bob, name="pen")
    assert tagged_cache.get("ann-items") == ["lamp"]


def test_a_rolled_back_write_keeps_the_entry(world):
    tagged_cache.get_or_set("names", lambda: sorted(Owner.objects.values_list("username")))
    with pytest.raises(RuntimeError), transaction.atomic():
        rename(world["ann"], "zed")()
        raise RuntimeError("rolled back")
    assert tagged_cache.get("names") is not None


def test_cached_functions_capture_joins_too(world):
    @cached(timeout=60)
    def usernames_by_item():
        return list(Item.objects.order_by("owner__username").values_list("name", flat=True))

    assert usernames_by_item() == ["lamp", "desk"]
    rename(world["ann"], "zed")()
    assert usernames_by_item() == ["desk", "lamp"]


# 4. Uncommitted data never reaches the shared cache.


def _read_in_other_thread(key):
    """What another process would see: a read of the shared cache from another connection."""
    import threading

    from django.db import connections

    seen = []

    def run():
        try:
            seen.append(tagged_cache.get(key, "absent"))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


@row("A value computed from a transaction's own uncommitted writes",
     "inside atomic(), a save, then get_or_set of a value reading that row; another thread "
     "reads the cache before the commit",
     "the caller gets the value; nothing is stored (the other thread sees no entry); after "
     "the commit it is cached")
def test_a_value_computed_from_the_transactions_own_writes_is_not_stored(world):
    ann = world["ann"]

    def read():
        return Owner.objects.get(pk=ann.pk).username

    with transaction.atomic():
        rename(ann, "uncommitted")()
        assert tagged_cache.get_or_set("ann", read) == "uncommitted"  # returned to the caller
        assert _read_in_other_thread("ann") == "absent"  # never shared
        assert tagged_cache.get("ann") is None
    assert tagged_cache.get_or_set("ann", read) == "uncommitted"  # committed now: stored
    assert tagged_cache.get("ann") == "uncommitted"


@pytest.mark.parametrize("how", ["rollback", "savepoint inside the computation"])
def test_nothing_uncommitted_stays_cached_after_a_rollback(world, how):
    ann = world["ann"]

    def read():
        if how == "savepoint inside the computation":
            try:
                with transaction.atomic():
                    rename(ann, "ghost")()
                    value = Owner.objects.get(pk=ann.pk).username
                    raise RuntimeError(value)
            except RuntimeError as exc:
                return str(exc)
        return Owner.objects.get(pk=ann.pk).username

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        if how == "rollback":
            rename(ann, "ghost")()
        assert tagged_cache.get_or_set("ann", read) == "ghost"
        1 / 0
    assert tagged_cache.get("ann") is None
    assert tagged_cache.get_or_set("ann", read if how == "rollback" else lambda: "ann") == "ann"


def test_after_a_failed_nested_block_the_committed_state_is_cached_again(world):
    ann = world["ann"]
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            rename(ann, "ghost")()
            raise RuntimeError("nested block fails")
        # The savepoint took the write (and its event) away: what is read now is committed.
        assert tagged_cache.get_or_set("ann", lambda: Owner.objects.get(pk=ann.pk).username) == (
            "ann"
        )
        assert _read_in_other_thread("ann") == "ann"


def test_a_write_the_value_does_not_depend_on_keeps_it_cacheable(world):
    ann, bob = world["ann"], world["bob"]
    with transaction.atomic():
        rename(bob, "robert")()
        tagged_cache.get_or_set("ann", lambda: Owner.objects.get(pk=ann.pk).username)
        assert _read_in_other_thread("ann") == "ann"


def test_a_joined_uncommitted_row_is_not_stored(world):
    with transaction.atomic():
        rename(world["ann"], "zed")()
        names = tagged_cache.get_or_set(
            "by-owner",
            lambda: list(Item.objects.order_by("owner__username").values_list("name", flat=True)),
        )
        assert names == ["desk", "lamp"]
        assert _read_in_other_thread("by-owner") == "absent"


@pytest.mark.django_db(transaction=False)
def test_under_testcase_the_tests_own_writes_are_the_baseline():
    # pytest-django's db fixture (Django's TestCase): the test's transaction is never committed,
    # but the code under test runs on it as on committed data, and caches as usual.
    owner = Owner.objects.create(username="tc")
    assert tagged_cache.get_or_set("tc", lambda: Owner.objects.get(pk=owner.pk).username) == "tc"
    assert tagged_cache.get("tc") == "tc"
    with transaction.atomic():  # a block of the test's own is uncommitted work again
        rename(owner, "inner")()
        tagged_cache.get_or_set("inner", lambda: Owner.objects.get(pk=owner.pk).username)
        assert tagged_cache.get("inner") is None


def test_the_table_index_finds_names_however_sql_spells_them():
    from cache_invalidation.tables import TableIndex

    index = TableIndex({"shop_item": ("a",), "shop_item_tags": ("b",), 'sch"."odd-name': ("c",)})
    sql = 'SELECT "shop_item"."id" FROM "shop_item" JOIN `SHOP_ITEM_TAGS` T2 ON x'
    assert index.tables(sql) == {"shop_item", "shop_item_tags"}
    assert index.sources(sql, "shop_item") == 1  # the FROM; "shop_item"."id" qualifies a column
    assert index.sources(sql + " UNION SELECT id FROM shop_item", "shop_item") == 2
    assert index.tables('SELECT 1 FROM "sch"."odd-name"') == {'sch"."odd-name'}
    assert index.tables("SELECT shop_items FROM x") == frozenset()  # part of a longer word
