"""The admin and the shop in a real browser: headless Chromium driven by Playwright.

One demo shop (``tests/browser_support.py``: ``runserver``, its own SQLite file, the suite's
Redis under a prefix of its own, the ``sync`` transport) serves every test of this module.
Each test works on products of its own, so they do not depend on their order. Rows are
changed behind the app's back (``no_invalidation()`` in a ``manage.py shell``) to make a cached
page really stale; what a person would see in the browser is what is asserted.

Every admin page visited is saved as a full-page screenshot under ``build/screenshots/``.
Selected by the marker ``browser``: ``runtests.py`` runs them once, in its SQLite pass;
``runtests.py --no-browser`` (or ``TEST_NO_BROWSER=1``) leaves them out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from django.conf import settings

from tests.browser_support import CHROMIUM_ARGS, SCREENSHOTS, ShopServer

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the `browser` fixture says what to install
    expect = sync_playwright = None

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ADMIN = ("admin", "admin")  # created by `manage.py demo`
CLERK = ("clerk", "clerk-password")  # staff, view permissions only (browser_support.SET_UP)
PAGE = "/admin/cache_invalidation/manualinvalidation/invalidate/"
DEAD_LETTERS = "/admin/cache_invalidation/deadletter/"
TIMEOUT_MS = 10_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Written to the shop's database behind the app's back: the cached page stays as it was.
STALE_PRICE = """
from decimal import Decimal
from cache_invalidation import no_invalidation
from testproject.shop.models import Product
with no_invalidation():
    assert Product.objects.filter(pk={pk}).update(price=Decimal("{price}")) == 1
"""

# The same, and the invalidation that should have followed is dead-lettered, as when the
# Redis deletes failed until the retries ran out.
DEAD_LETTERED_PRICE = (
    STALE_PRICE
    + """
import json
from cache_invalidation import InvalidationEvent, deadletter
event = InvalidationEvent(type="shop.Product.updated", entity_type="shop.Product",
                          entity_id="{pk}", tags=("product:{pk}",), changed_fields=("price",))
row = deadletter.record([event], "retries_exhausted", "TimeoutError: Redis did not answer")
print("=>", json.dumps(row.pk))
"""
)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopServer]:
    server = ShopServer(tmp_path_factory.mktemp("browser-shop"), settings.REDIS_URL)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        server.set_up()
        server.start()
        yield server
    finally:
        server.stop()
        keys = list(client.scan_iter(match=f"{server.key_prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.fail(
            "The browser tests need Playwright's Python package: pip install -e '.[dev]' (or "
            "'.[browser]'). It drives the system Chromium; `playwright install` is never "
            "needed. Skip them with `runtests.py --no-browser` or `pytest -m 'not browser'`.",
            pytrace=False,
        )
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Session:
    """One browser context (its own cookies) with the helpers the tests share."""

    def __init__(self, context: BrowserContext, shop: ShopServer, shots: Path) -> None:
        self.context = context
        self.shop = shop
        self.shots = shots
        self.page: Page = context.new_page()

    def go(self, path: str) -> Any:
        return self.page.goto(path if path.startswith("http") else self.shop.url + path)

    def shot(self, name: str) -> Path:
        """A full-page screenshot of what the page shows now."""
        target = self.shots / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=True)
        return target

    def admin(self, path: str, name: str) -> Any:
        """Open an admin page and save its screenshot."""
        response = self.go(path)
        self.shot(name)
        return response

    def log_in(self, username: str, password: str) -> None:
        self.go("/admin/login/?next=/admin/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", password)
        self.page.click("input[type=submit]")
        expect(self.page.locator("#user-tools")).to_contain_text(
            f"Welcome, {username}", ignore_case=True
        )

    def product(self, name: str) -> tuple[str, str]:
        """Open a product page: (X-Cache header, price shown)."""
        response = self.go(self.shop.product_url(name))
        assert response is not None and response.status == 200
        price = self.page.locator("main p strong").first.inner_text()
        return response.headers["x-cache"], price

    def csrf_post(self, path: str, form: dict[str, str]) -> Any:
        """A POST as a crafted request would send it: the session's cookies and CSRF token,
        no form on screen. Redirects are not followed."""
        token = next(c["value"] for c in self.context.cookies() if c["name"] == "csrftoken")
        return self.context.request.post(
            self.shop.url + path,
            form={"csrfmiddlewaretoken": token, **form},
            max_redirects=0,
        )

    def dashboard(self) -> dict[str, Any]:
        """The numbers of the dashboard on the "Cache invalidation" page, as displayed."""
        return self.page.evaluate(
            """() => {
              const text = (el) => el ? el.innerText.trim() : null;
              const models = {};
              for (const row of document.querySelectorAll('#ci-events tbody tr')) {
                const th = row.querySelector('th');
                if (th) models[text(th)] = [...row.querySelectorAll('td')].map(text);
              }
              const recent = [...document.querySelectorAll('#ci-recent tbody tr')]
                .filter((row) => row.querySelectorAll('td').length > 1).length;
              return {dlq: text(document.querySelector('#ci-dlq')), models, recent};
            }"""
        )


@pytest.fixture
def open_session(browser: Browser, shop: ShopServer, screenshots: Path) -> Iterator[Any]:
    contexts: list[BrowserContext] = []

    def open_session(user: tuple[str, str] | None = ADMIN) -> Session:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        session = Session(context, shop, screenshots)
        if user is not None:
            session.log_in(*user)
        return session

    yield open_session
    for context in contexts:
        context.close()


def number(text: str | None) -> int:
    """A count as the dashboard shows it (a dash is nothing yet)."""
    return int(text) if text and text.strip().isdigit() else 0


def price_text(price: str) -> str:
    return f"${Decimal(price):.2f}"


# -- the tests -------------------------------------------------------------------------------
def test_log_in_through_the_admin_login_form(open_session):
    session = open_session(user=None)
    session.go("/admin/")
    assert "/admin/login/" in session.page.url  # sent to the login form
    session.shot("01-login")
    session.page.fill("#id_username", "admin")
    session.page.fill("#id_password", "not-the-password")
    session.page.click("input[type=submit]")
    expect(session.page.locator(".errornote")).to_contain_text(
        "Please enter the correct username and password"
    )
    session.shot("01-login-refused")
    session.page.fill("#id_username", ADMIN[0])
    session.page.fill("#id_password", ADMIN[1])
    session.page.click("input[type=submit]")
    expect(session.page.locator("#site-name")).to_contain_text("Django administration")
    expect(session.page.locator("#user-tools")).to_contain_text("Welcome, admin", ignore_case=True)
    assert session.page.url.rstrip("/").endswith("/admin")
    session.shot("01-admin-index")
    # The app's section, and the page's link for a user who may invalidate.
    session.admin("/admin/cache_invalidation/", "01-app-index")
    expect(session.page.locator(f'a[href="{PAGE}"]')).to_have_text("Cache invalidation")


def test_invalidating_a_products_tags_from_the_form_refreshes_the_cached_page(open_session, shop):
    session = open_session()
    # By tag: product:<pk>.
    assert session.product("Colombia Huila") == ("miss", "$12.50")
    assert session.product("Colombia Huila") == ("hit", "$12.50")
    shop.shell(STALE_PRICE.format(pk=shop.products["Colombia Huila"], price="13.75"))
    assert session.product("Colombia Huila") == ("hit", "$12.50")  # stale, as intended

    session.admin(PAGE, "02-invalidate-page")
    expect(session.page.locator("h1")).to_have_text("Cache invalidation")
    session.page.fill("#id_tags", f"product:{shop.products['Colombia Huila']}")
    session.shot("02-invalidate-by-tag-filled")
    session.page.click("input[name=_invalidate]")
    expect(session.page.locator(".messagelist .success")).to_contain_text(
        "Invalidated 1 tag and 0 keys"
    )
    session.shot("02-invalidated-by-tag")
    assert session.product("Colombia Huila") == ("miss", "$13.75")
    assert session.product("Colombia Huila") == ("hit", "$13.75")

    # By model and primary key: what a save of the row would drop.
    assert session.product("Kenya AA")[1] == "$16.20"
    shop.shell(STALE_PRICE.format(pk=shop.products["Kenya AA"], price="17.40"))
    assert session.product("Kenya AA") == ("hit", "$16.20")
    session.admin(PAGE, "02-invalidate-page-again")
    session.page.select_option("#id_model", "shop.Product")
    session.page.fill("#id_pk", str(shop.products["Kenya AA"]))
    session.page.click("input[name=_invalidate]")
    expect(session.page.locator(".messagelist .success")).to_contain_text("Invalidated")
    session.shot("02-invalidated-by-row")
    # The audit log on the page shows both submissions, by this user.
    recent = session.page.locator("#ci-recent tbody")
    expect(recent).to_contain_text(f"shop.Product#{shop.products['Kenya AA']}")
    expect(recent.locator("tr").first).to_contain_text("admin")
    assert session.product("Kenya AA") == ("miss", "$17.40")


def test_replaying_a_dead_letter_from_the_admin_list(open_session, shop):
    session = open_session()
    assert session.product("Earl Grey") == ("miss", "$7.50")
    session.admin(PAGE, "03-dashboard-before-dead-letter")
    pending_before = number(session.dashboard()["dlq"])
    letter = shop.shell(DEAD_LETTERED_PRICE.format(pk=shop.products["Earl Grey"], price="8.10"))
    assert session.product("Earl Grey") == ("hit", "$7.50")  # its invalidation never happened

    session.admin(PAGE, "03-dashboard-with-dead-letter")
    assert number(session.dashboard()["dlq"]) == pending_before + 1

    session.admin(DEAD_LETTERS, "03-dead-letters")
    row = session.page.locator(f'#result_list tbody tr:has(input[value="{letter}"])')
    expect(row.locator("td.field-status")).to_have_text("Pending")
    expect(row).to_contain_text("Retries exhausted")
    row.locator("input.action-select").check()
    session.page.select_option("select[name=action]", "replay_selected")
    session.shot("03-dead-letters-replay-chosen")
    session.page.click("button[name=index]")
    expect(session.page.locator(".messagelist .success")).to_have_text("Replayed 1 dead letter.")
    row = session.page.locator(f'#result_list tbody tr:has(input[value="{letter}"])')
    expect(row.locator("td.field-status")).to_have_text("Replayed")
    session.shot("03-dead-letters-replayed")

    session.admin(f"{DEAD_LETTERS}{letter}/change/", "03-dead-letter-detail")
    expect(session.page.locator(".field-status")).to_contain_text("Replayed")
    expect(session.page.locator(".field-resolved_at .readonly")).not_to_have_text("-")

    assert session.product("Earl Grey") == ("miss", "$8.10")  # the replay invalidated it
    session.admin(PAGE, "03-dashboard-after-replay")
    assert number(session.dashboard()["dlq"]) == pending_before


def test_the_dashboard_numbers_move_after_a_write(open_session, shop):
    session = open_session()
    session.admin(PAGE, "04-dashboard-before")
    before = session.dashboard()
    hour_before = before["models"].get("shop.Product", ["0"] * 8)
    published, applied = number(hour_before[0]), number(hour_before[1])

    # A write through the admin's change form: it commits, the sync transport applies it.
    assert session.product("Gooseneck Kettle")[1] == "$49.00"
    session.admin(
        f"/admin/shop/product/{shop.products['Gooseneck Kettle']}/change/", "04-product-change-form"
    )
    session.page.fill("#id_price", "51.00")
    session.page.click("input[name=_save]")
    expect(session.page.locator(".messagelist .success")).to_contain_text(
        "was changed successfully"
    )
    session.shot("04-product-list-after-save")
    assert session.product("Gooseneck Kettle") == ("miss", "$51.00")

    # And a manual invalidation: one more row in the "Last manual invalidations" table.
    session.admin(PAGE, "04-dashboard-after-write")
    session.page.fill("#id_tags", "category:3:products")
    session.page.click("input[name=_invalidate]")
    expect(session.page.locator(".messagelist .success")).to_contain_text("Invalidated 1 tag")
    session.shot("04-dashboard-after")
    after = session.dashboard()
    hour_after = after["models"]["shop.Product"]
    assert number(hour_after[0]) > published, (before, after)  # published, last hour
    assert number(hour_after[1]) > applied, (before, after)  # applied, last hour
    assert number(hour_after[4]) >= number(hour_after[0])  # the day includes the hour
    assert after["recent"] == before["recent"] + 1, (before, after)
    assert "manual" in after["models"]  # the manual invalidation is counted too


def test_a_staff_user_without_the_permissions_is_refused(open_session, shop):
    pk = shop.products["Tea Infuser"]
    letter = shop.shell(DEAD_LETTERED_PRICE.format(pk=pk, price="9.00"))
    clerk = open_session(CLERK)
    assert clerk.product("Tea Infuser") == ("miss", "$9.00")
    shop.shell(STALE_PRICE.format(pk=pk, price="9.90"))
    assert clerk.product("Tea Infuser") == ("hit", "$9.00")

    # No link to the page, and the page itself answers 403.
    clerk.admin("/admin/cache_invalidation/", "05-clerk-app-index")
    expect(clerk.page.locator("#content-main")).to_contain_text("Dead letters")
    expect(clerk.page.locator(f'a[href="{PAGE}"]')).to_have_count(0)
    response = clerk.admin(PAGE, "05-clerk-invalidate-page-403")
    assert response.status == 403
    expect(clerk.page.locator("body")).to_contain_text("403 Forbidden")
    expect(clerk.page.locator("#id_tags")).to_have_count(0)

    # The dead letters are visible, but not the replay action.
    clerk.admin(DEAD_LETTERS, "05-clerk-dead-letters")
    row = clerk.page.locator('#result_list tbody tr:has-text("Retries exhausted")').first
    expect(row).to_be_visible()
    actions = clerk.page.locator('select[name="action"] option[value="replay_selected"]')
    expect(actions).to_have_count(0)

    # Posting directly changes nothing either: the page refuses, the action is not offered.
    refused = clerk.csrf_post(PAGE, {"tags": f"product:{pk}", "_invalidate": "Invalidate"})
    assert refused.status == 403, refused.text()
    assert "CSRF" not in refused.text()
    clerk.csrf_post(
        DEAD_LETTERS, {"action": "replay_selected", "_selected_action": str(letter), "index": "0"}
    )
    clerk.admin(f"{DEAD_LETTERS}{letter}/change/", "05-clerk-dead-letter-still-pending")
    expect(clerk.page.locator(".field-status")).to_contain_text("Pending")
    assert clerk.product("Tea Infuser") == ("hit", "$9.00")  # still the cached page

    # The same two requests from the superuser's session do what the clerk's could not: the
    # refusals above were the permissions, not a malformed request.
    admin = open_session(ADMIN)
    done = admin.csrf_post(PAGE, {"tags": f"product:{pk}", "_invalidate": "Invalidate"})
    assert done.status == 302, done.text()
    assert admin.product("Tea Infuser") == ("miss", "$9.90")
    admin.csrf_post(
        DEAD_LETTERS, {"action": "replay_selected", "_selected_action": str(letter), "index": "0"}
    )
    admin.admin(f"{DEAD_LETTERS}{letter}/change/", "05-admin-dead-letter-replayed")
    expect(admin.page.locator(".field-status")).to_contain_text("Replayed")


ADMIN_PAGES = [
    ("06-admin-index", "/admin/"),
    ("06-app-index", "/admin/cache_invalidation/"),
    ("06-invalidate-page", PAGE),
    ("06-invalidate-page-index-scanned", PAGE + "?scan_index=1"),
    ("06-dead-letters", DEAD_LETTERS),
    ("06-dead-letters-pending", DEAD_LETTERS + "?status__exact=pending"),
    ("06-audit-log", "/admin/cache_invalidation/manualinvalidation/"),
    ("06-outbox", "/admin/cache_invalidation/outboxevent/"),
    ("06-products", "/admin/shop/product/"),
    ("06-categories", "/admin/shop/category/"),
    ("06-reviews", "/admin/shop/review/"),
]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_admin_page_visited_is_saved_as_a_screenshot(open_session, shop, screenshots):
    session = open_session()
    for name, path in ADMIN_PAGES:
        response = session.admin(path, name)
        assert response.status == 200, (path, response.status)
        expect(session.page.locator("#user-tools")).to_contain_text(
            "Welcome, admin", ignore_case=True
        )
    # A preview of a key pattern, and a row of the audit log.
    session.go(PAGE)
    session.page.fill("#id_pattern", "product:*:page")
    session.page.click("input[name=_preview]")
    expect(session.page.locator("#ci-match-count")).to_contain_text("product:*:page")
    session.shot("06-pattern-preview")
    session.admin("/admin/cache_invalidation/manualinvalidation/", "06-audit-log-after-preview")
    session.page.locator("#result_list tbody tr th a").first.click()
    expect(session.page.locator(".field-status")).to_contain_text("Previewed")
    session.shot("06-audit-log-entry")

    expected = {name for name, _ in ADMIN_PAGES} | {"06-pattern-preview", "06-audit-log-entry"}
    saved = {path.stem: path for path in screenshots.glob("*.png")}
    assert expected <= saved.keys(), sorted(expected - saved.keys())
    for name, path in saved.items():  # every screenshot of the run, this test's or not
        width, height = png_size(path)
        assert width == 1280 and height >= 900, (name, width, height)
        assert path.stat().st_size > 1_000, (name, path.stat().st_size)
    for name in expected:  # admin pages with their styles, not a blank window (about 3 kB)
        assert saved[name].stat().st_size > 20_000, (name, saved[name].stat().st_size)
    # Full pages: the dashboard is taller than the window.
    assert png_size(saved["06-invalidate-page"])[1] > 900
