"""The "Cache invalidation" admin page: permission, CSRF, preview-then-confirm, audit, dashboard."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.test import Client

from cache_invalidation import InvalidationEvent, deadletter, no_invalidation, tagged_cache
from cache_invalidation.models import DeadLetter, ManualInvalidation
from testproject.shop.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)
PAGE = "/admin/cache_invalidation/manualinvalidation/invalidate/"
APP_INDEX = "/admin/cache_invalidation/"
AUDIT = "/admin/cache_invalidation/manualinvalidation/"
PREFIX = django_settings.KEY_PREFIX


def staff(client, *codenames):
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    for codename in ("view_deadletter", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


@pytest.fixture
def operator(client):
    return staff(client, "invalidate_cache", "view_manualinvalidation")


@pytest.fixture
def product():
    with no_invalidation():
        lamps = Category.objects.create(name="Lamps", slug="lamps")
        return Product.objects.create(name="Arc", price=Decimal("89.00"), category=lamps)


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def stale_page(client, product):
    """Cache the product page, then change the row without invalidating: the page is stale."""
    url = f"/products/{product.pk}/"
    assert client.get(url)["X-Cache"] == "miss"
    with no_invalidation():
        Product.objects.filter(pk=product.pk).update(price=Decimal("94.00"))
    page = client.get(url)
    assert page["X-Cache"] == "hit" and "89.00" in page.content.decode()
    return url


# -- who may see and use it -------------------------------------------------------------------
def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={PAGE}"
    assert client.post(PAGE, {"tags": "x"}).status_code == 302
    assert not ManualInvalidation.objects.exists()


def test_staff_without_the_permission_get_403_and_no_link(client):
    staff(client)
    tagged_cache.set("shelf", "x", tags=["shelf"])
    assert client.get(PAGE).status_code == 403
    assert client.post(PAGE, {"tags": "shelf", "_invalidate": "1"}).status_code == 403
    assert tagged_cache.get("shelf") == "x"
    index = client.get(APP_INDEX)
    assert index.status_code == 200 and PAGE.encode() not in index.content
    assert not ManualInvalidation.objects.exists()


def test_the_app_index_and_the_audit_log_link_to_the_page(client, operator):
    assert PAGE.encode() in client.get(APP_INDEX).content
    assert PAGE.encode() in client.get(AUDIT).content


def test_get_never_changes_anything(client, operator):
    tagged_cache.set("shelf", "x", tags=["shelf"])
    cache.set("report:1", 1)
    response = client.get(PAGE, {"tags": "shelf", "pattern": "report:*", "_invalidate": "1",
                                 "apply_now": "on"})
    assert response.status_code == 200
    assert tagged_cache.get("shelf") == "x" and cache.get("report:1") == 1
    assert not ManualInvalidation.objects.exists()


def test_post_without_the_csrf_token_is_refused():
    checked = Client(enforce_csrf_checks=True)
    staff(checked, "invalidate_cache")
    tagged_cache.set("shelf", "x", tags=["shelf"])
    response = checked.post(PAGE, {"tags": "shelf", "_invalidate": "1"})
    assert response.status_code == 403
    assert tagged_cache.get("shelf") == "x"
    assert not ManualInvalidation.objects.exists()


# -- tags, keys, rows ---------------------------------------------------------------------------
def test_invalidating_a_products_tag_refreshes_its_page(client, operator, product):
    url = stale_page(client, product)
    response = client.post(PAGE, {"tags": f"product:{product.pk}", "_invalidate": "1"},
                           follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    [message] = messages_of(response)
    assert message.startswith("Invalidated 1 tag and 0 keys: ")
    page = client.get(url)
    assert page["X-Cache"] == "miss" and "94.00" in page.content.decode()
    row = ManualInvalidation.objects.get()
    assert (row.source, row.status, row.username, row.user, row.tags) == (
        "admin", "applied", "ops", operator, [f"product:{product.pk}"])


def test_apply_now_invalidates_in_the_web_process(client, operator):
    tagged_cache.set("shelf", "x", tags=["shelf"])
    cache.set("banner", "x")
    response = client.post(PAGE, {"tags": "shelf\n\n shelf ", "keys": "banner",
                                  "apply_now": "on", "_invalidate": "1"}, follow=True)
    assert messages_of(response) == ["Invalidated 1 tag and 1 key: 2 cache entries deleted."]
    assert tagged_cache.get("shelf") is None and cache.get("banner") is None
    assert ManualInvalidation.objects.get().result == (
        "Invalidated 1 tag(s) and 1 key(s) now: 2 entries deleted.")


def test_published_through_a_transport_says_so(client, operator, settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "outbox", "OUTBOX_DELIVER_ON_COMMIT": False}
    response = client.post(PAGE, {"tags": "shelf", "_invalidate": "1"}, follow=True)
    event_id = ManualInvalidation.objects.get().event_id
    assert messages_of(response) == [
        f"Published the invalidation of 1 tag and 0 keys through the outbox transport "
        f"(event {event_id})."]


def test_model_and_pk_resolve_the_rows_tags(client, operator, product):
    url = stale_page(client, product)
    preview = client.post(PAGE, {"model": "shop.Product", "pk": str(product.pk),
                                 "_preview": "1"})
    assert preview.status_code == 200
    assert f"product:{product.pk}" in preview.context["preview"]["plan"].tags
    assert preview.context["preview"]["can_confirm"] and b'name="_confirm"' in preview.content
    assert client.get(url)["X-Cache"] == "hit"  # a preview changes nothing
    client.post(PAGE, {"model": "shop.Product", "pk": str(product.pk), "_invalidate": "1"})
    assert client.get(url)["X-Cache"] == "miss"
    statuses = list(ManualInvalidation.objects.order_by("pk").values_list(
        "status", "dry_run", "model_label", "object_pk"))
    assert statuses == [("previewed", True, "shop.Product", str(product.pk)),
                        ("applied", False, "shop.Product", str(product.pk))]


def test_a_missing_row_is_a_clear_error(client, operator, product):
    response = client.post(PAGE, {"model": "shop.Product", "pk": "424242", "_invalidate": "1"})
    assert response.status_code == 200
    assert response.context["form"].errors == {
        "pk": ["shop.Product with primary key '424242' does not exist."]}
    row = ManualInvalidation.objects.get()
    assert (row.status, row.model_label, row.object_pk) == ("refused", "shop.Product", "424242")


def test_an_empty_submission_is_refused(client, operator):
    response = client.post(PAGE, {"_invalidate": "1"})
    assert response.context["form"].non_field_errors() == [
        "Say what to invalidate: tags, keys, a model and primary key, or a key pattern."]
    assert ManualInvalidation.objects.get().status == "refused"


# -- patterns ---------------------------------------------------------------------------------
@pytest.fixture
def reports(redis_client):
    for n in (1, 2, 3):
        cache.set(f"report:{n}", n)
    cache.set("reports-archive", "keep")
    outside = [f"{PREFIX}-other:1:report:1", f"{PREFIX}x:1:report:9"]
    for key in outside:
        redis_client.set(key, "keep")
    return outside


def test_a_pattern_is_previewed_then_deleted_on_confirmation(client, operator, reports,
                                                             redis_client):
    form = {"pattern": "report:*", "_invalidate": "1"}
    preview = client.post(PAGE, form)
    assert preview.status_code == 200
    assert preview.context["preview"]["matched"] == 3
    assert b"matches 3 keys now" in preview.content
    assert [cache.get(f"report:{n}") for n in (1, 2, 3)] == [1, 2, 3]
    token = preview.context["preview"]["token"]
    assert f'value="{token}"'.encode() in preview.content

    done = client.post(PAGE, {**form, "confirm": token}, follow=True)
    assert messages_of(done) == ["Deleted 3 keys matching report:*."]
    assert [cache.get(f"report:{n}") for n in (1, 2, 3)] == [None, None, None]
    assert cache.get("reports-archive") == "keep"
    assert [redis_client.get(k) for k in reports] == [b"keep", b"keep"]
    rows = list(ManualInvalidation.objects.order_by("pk").values_list(
        "status", "dry_run", "matched_count", "deleted_count"))
    assert rows == [("previewed", True, 3, None), ("applied", False, 3, 3)]


def test_a_confirmation_counts_only_for_what_was_previewed(client, operator, reports):
    token = client.post(PAGE, {"pattern": "report:1", "_invalidate": "1"}).context[
        "preview"]["token"]
    response = client.post(PAGE, {"pattern": "report:*", "confirm": token,
                                  "_invalidate": "1"})
    assert response.context["preview"]["matched"] == 3  # previewed again, not deleted
    assert messages_of(response) == [
        "The confirmation expired or no longer matches the form; check the preview and "
        "confirm again."]
    assert cache.get("report:2") == 2


def test_a_confirmation_is_personal(client, operator, reports):
    token = client.post(PAGE, {"pattern": "report:*", "_invalidate": "1"}).context[
        "preview"]["token"]
    other = Client()
    staff_user = User.objects.create_user("other", password="pw", is_staff=True)
    staff_user.user_permissions.add(Permission.objects.get(codename="invalidate_cache"))
    other.force_login(staff_user)
    other.post(PAGE, {"pattern": "report:*", "confirm": token, "_invalidate": "1"})
    assert cache.get("report:1") == 1


def test_a_bare_star_is_refused(client, operator, reports):
    response = client.post(PAGE, {"pattern": "*", "_invalidate": "1"})
    assert response.status_code == 200
    assert response.context["form"].errors == {"pattern": [
        "The pattern '*' would match every key of the cache; include literal text, such as "
        "product:*:page."]}
    assert response.context["preview"] is None
    assert cache.get("report:1") == 1
    row = ManualInvalidation.objects.get()
    assert (row.status, row.pattern) == ("refused", "*")


def test_tags_and_a_pattern_together(client, operator, reports):
    tagged_cache.set("shelf", "x", tags=["shelf"])
    form = {"tags": "shelf", "pattern": "report:*", "_invalidate": "1"}
    preview = client.post(PAGE, form)
    assert tagged_cache.get("shelf") == "x"  # nothing happens before the confirmation
    done = client.post(PAGE, {**form, "confirm": preview.context["preview"]["token"]},
                       follow=True)
    assert messages_of(done) == ["Invalidated 1 tag and 0 keys: 1 cache entry deleted.",
                                 "Deleted 3 keys matching report:*."]
    assert tagged_cache.get("shelf") is None and cache.get("report:3") is None


# -- the dashboard and the audit log ----------------------------------------------------------
def test_the_dashboard_shows_numbers(client, operator, product):
    product.price = Decimal("95.00")
    product.save()  # one event published and applied for shop.Product
    deadletter.record([InvalidationEvent(type="manual", tags=("t",))],
                      DeadLetter.Reason.PUBLISH_FAILED, "broker down")
    client.post(PAGE, {"tags": "shelf", "_invalidate": "1"})
    page = client.get(PAGE)
    dashboard = page.context["dashboard"]
    by_model = {row["model"]: row for row in dashboard["models"]}
    assert by_model["shop.Product"]["hour"]["published"] == 1
    assert by_model["shop.Product"]["hour"]["applied"] == 1
    assert by_model["shop.Product"]["day"]["applied"] == 1
    assert dashboard["dlq_pending"] == 1
    assert [c["state"] for c in dashboard["components"]] == ["ok", "unused", "ok"]
    assert dashboard["lag"][0]["samples"] >= 2 and dashboard["lag"][0]["p50"] is not None
    content = page.content.decode()
    assert '<td class="num" id="ci-dlq">1</td>' in content
    assert '<th scope="row">shop.Product</th>' in content
    assert [row.status for row in dashboard["recent"]] == ["applied"]
    assert not dashboard["index_scanned"]
    scanned = client.get(PAGE, {"scan_index": "1"}).context["dashboard"]
    assert scanned["index_scanned"] and dict(scanned["index"])["tag_sets"] >= 0


def test_the_audit_log_is_read_only(client, operator):
    client.post(PAGE, {"pattern": "*", "_invalidate": "1"})
    row = ManualInvalidation.objects.get()
    listing = client.get(AUDIT, {"source__exact": "admin", "status__exact": "refused"})
    assert listing.status_code == 200 and listing.context["cl"].result_count == 1
    assert client.get(AUDIT, {"q": "ops"}).context["cl"].result_count == 1
    assert client.get(f"{AUDIT}add/").status_code == 403
    assert client.post(f"{AUDIT}{row.pk}/change/", {"status": "applied"}).status_code == 403
    assert client.post(f"{AUDIT}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ManualInvalidation.objects.get().status == "refused"
