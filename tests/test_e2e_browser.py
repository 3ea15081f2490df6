"""End to end in a real browser: headless Debian Chromium driven by Playwright.

Sign in at the real oidc-provider, see the identity and role on the demo page, watch it refresh
the token by itself, sign out (the service, then the IdP's end-session page, whose back-channel
logout comes back to the service). A screenshot of each step lands in ``test-artifacts/``.
"""

from __future__ import annotations

import pytest
import requests

from tests.browser_support import BrowserStack
from tests.debian import ToolUnavailable, ensure_tool
from tests.support import ARTIFACTS

pytestmark = pytest.mark.e2e
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ensure_tool("chromium", ["chromium"], recommends=True)
    except ToolUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture
def page(chromium: str):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context()
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"e2e-{name}.png"), full_page=True)


def test_sign_in_see_identity_auto_refresh_and_sign_out(page, stack: BrowserStack) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(f"{stack.base}/demo/?refresh_in=2")
    expect(page.locator("#status")).to_have_text("You are signed out.")
    page.click("#sign-in")

    # The IdP's own login page: pick bob (an admin in the IdP's groups) and submit.
    page.wait_for_url(f"{stack.idp.issuer}/interaction/**")
    page.select_option("select[name=login]", "bob") if page.locator("select[name=login]").count() else \
        page.fill("input[name=login]", "bob")
    page.click("button[type=submit], input[type=submit]")

    page.wait_for_url(f"{stack.base}/demo/**")
    expect(page.locator("#identity")).to_have_text("bob@example.com")
    expect(page.locator("#role")).to_have_text("admin")
    expires_first = page.locator("#expires").inner_text()
    assert expires_first.endswith("Z")
    shot(page, "signed-in")

    # The page refreshes the token by itself, as a chat app does on tokenAboutToExpire.
    expect(page.locator("#refreshes")).not_to_have_text("0", timeout=15_000)
    shot(page, "refreshed")
    cookie = next(c for c in page.context.cookies() if c["name"] == "ts_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    page.click("#sign-out")
    # RP-initiated logout: the IdP asks to confirm, then sends the browser back to the demo.
    page.wait_for_url(f"{stack.idp.issuer}/**")
    confirm = page.locator("button[type=submit], input[type=submit], button[autofocus]")
    if confirm.count():
        confirm.first.click()
    page.wait_for_url(f"{stack.base}/demo/**")
    expect(page.locator("#status")).to_have_text("You are signed out.")
    shot(page, "signed-out")
    assert not any(c["name"] == "ts_session" for c in page.context.cookies())
    # And the old session cookie is worthless now.
    resp = requests.post(f"{stack.base}/v1/token", cookies={"ts_session": cookie["value"]},
                         headers={"Origin": stack.base, "X-Requested-With": "x"}, timeout=10)
    assert resp.status_code == 401
