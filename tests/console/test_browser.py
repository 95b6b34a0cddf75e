"""The console in a real browser: Playwright driving Debian's Chromium (headless) against a live gateway.

Every page visited is saved as a screenshot under MPUSH_SCREENSHOTS (default: the test's tmp dir, printed),
and any console error or uncaught exception in the browser fails the test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.console.conftest import OPERATOR, PASSWORD
from tests.support.service import Gateway

CHROMIUM = os.environ.get("MPUSH_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (as .ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


class Shots:
    """Saves numbered screenshots of the pages a test visits."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Shots:
    root = Path(os.environ["MPUSH_SCREENSHOTS"]) if os.environ.get("MPUSH_SCREENSHOTS") else tmp_path / "screenshots"
    folder = root / request.node.name
    print(f"screenshots: {folder}")
    return Shots(folder)


@pytest.fixture
def refusals() -> set[int]:
    """HTTP statuses a test expects a page to answer with: the browser logs those as console errors too."""
    return set()


@pytest.fixture
def page(browser: Browser, gw: Gateway, refusals: set[int]) -> Iterator[Page]:
    """A fresh browser context at 1280 px; fails the test on any console error or page exception, except the
    logged load of a page answering a status in `refusals`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=gw.url)
    tab = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        expected = any(f"status of {status} " in message.text for status in refusals)
        if message.type == "error" and not expected:
            problems.append(f"console error: {message.text}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    context.close()
    assert not problems, problems


def sign_in(page: Page, password: str = PASSWORD) -> None:
    page.goto("/console/")
    page.get_by_label("Operator").fill(OPERATOR)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_wrong_password_then_right_then_sign_out(page: Page, shots: Shots, refusals: set[int]) -> None:
    """A wrong password shows the form again with an error; the right one opens the dashboard; signing out
    returns to the sign-in form and the dashboard is closed again."""
    refusals.add(401)
    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    shots.take(page, "sign-in")
    sign_in(page, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    shots.take(page, "sign-in-refused")
    sign_in(page)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    shots.take(page, "dashboard")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto("/console/rules")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_form_without_its_csrf_token_is_refused(page: Page, shots: Shots, refusals: set[int]) -> None:
    """A console form submitted with its CSRF token removed is refused with a 403 page; nothing is created."""
    refusals.add(403)
    sign_in(page)
    page.goto("/console/apps")
    form = page.locator("form[action='/console/apps']")
    form.locator("input[name=csrf]").evaluate("input => input.remove()")
    form.get_by_label("Name").fill("forged-app")
    with page.expect_response("**/console/apps") as answer:
        form.get_by_role("button", name="Create").click()
    assert answer.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("security token")
    shots.take(page, "csrf-refused")
    page.goto("/console/apps")
    expect(page.get_by_text("forged-app")).to_have_count(0)


def test_create_an_app_see_its_secret_once_and_rotate_it(page: Page, shots: Shots) -> None:
    """A new app's secret is shown on creation only; rotating shows a different one."""
    sign_in(page)
    page.goto("/console/apps")
    page.get_by_label("Name").fill("billing")
    page.get_by_role("button", name="Create").click()
    secret = page.locator("#secret").inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", secret)
    shots.take(page, "app-created")
    page.goto("/console/apps")
    expect(page.locator("#secret")).to_have_count(0)
    expect(page.get_by_text(secret)).to_have_count(0)
    shots.take(page, "apps")
    row = page.locator("tr", has_text="billing")
    row.get_by_role("button", name="Rotate secret").click()  # the confirm dialog is accepted
    rotated = page.locator("#secret").inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", rotated) and rotated != secret
    expect(page.get_by_text("the old one no longer works")).to_be_visible()
    shots.take(page, "secret-rotated")


def test_find_a_message_by_receiver_and_read_its_failover_timeline(page: Page, shots: Shots, gw: Gateway) -> None:
    """A message sent through the API is found by its receiver; its timeline shows the routing rule, the failed
    attempt, the switch decision and the delivered attempt on the second account."""
    task_id = gw.send("otp", "13800138000", {"code": "2468"})["data"]["task_id"]
    gw.wait(task_id)
    sign_in(page)
    page.get_by_role("link", name="Messages").click()
    page.get_by_label("Receiver").fill("13800138000")
    page.get_by_role("button", name="Search").click()
    shots.take(page, "messages")
    page.get_by_role("link", name=task_id).click()
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text("routed by rule otp-failover")
    expect(timeline).to_contain_text("attempt 1 via flaky: retryable")
    expect(timeline).to_contain_text("send_failure: switch_provider by rule switch-on-error")
    expect(timeline).to_contain_text("attempt 2 via steady: ok")
    page.locator("summary", has_text="template params").first.click()
    shots.take(page, "message-timeline")


def test_reload_a_broken_rule_file_and_see_file_and_line(page: Page, shots: Shots, gw: Gateway) -> None:
    """A reload of a broken file is refused; the rules page shows the error with file:line, linked to the line."""
    rules_file = gw.svc.settings.rules_dir / "rules.yaml"
    rules_file.write_text(rules_file.read_text().replace("{use: steady, tier: 2}", "{use: nobody, tier: 2}"))
    sign_in(page)
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("button", name="Reload from disk").click()
    expect(page.get_by_role("status")).to_contain_text("Reload rejected")
    error = page.locator("pre.reload-error a").first
    expect(error).to_contain_text(re.compile(r"rules\.yaml:\d+"))
    expect(error).to_contain_text("nobody")
    error.click()
    expect(page).to_have_url(re.compile(r"#rules\.yaml-L\d+$"))
    shots.take(page, "rules-reload-error")


def test_dry_run_a_fact(page: Page, shots: Shots) -> None:
    """The dry-run form shows the decision and the trace for a fact."""
    sign_in(page)
    page.goto("/console/rules")
    page.get_by_label("Fact (JSON)").fill('{"channel": "otp", "receiver": "13800138000", "app": "shop"}')
    page.get_by_role("button", name="Run").click()
    expect(page.locator(".dry-run-result pre")).to_contain_text("WIN  otp-failover")
    shots.take(page, "rules-dry-run")


def test_providers_test_send_and_the_other_pages(page: Page, shots: Shots, gw: Gateway) -> None:
    """The providers page sends a test message through an account; batches and the dashboard render."""
    gw.call("POST", "/api/v1/messages/batch",
            {"channel_id": "otp", "receivers": ["13600000001", "13600000002"], "template_params": {"code": "1"}})
    sign_in(page)
    page.goto("/console/providers")
    section = page.locator("section#steady")
    section.get_by_label("Send a test message to").fill("13800138000")
    section.get_by_role("button", name="Send test").click()
    expect(page.locator(".test-result")).to_contain_text("Test send through steady to 13800138000")
    shots.take(page, "providers")
    page.goto("/console/batches")
    page.locator("table a").first.click()
    expect(page.locator(".tiles")).to_contain_text("messages")
    shots.take(page, "batch")
    page.goto("/console/")
    expect(page.locator(".chart svg")).to_be_visible()
    shots.take(page, "dashboard")


def test_pages_fit_a_phone(page: Page, shots: Shots, gw: Gateway) -> None:
    """At phone width every page renders without a horizontal scroll of the page itself."""
    task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
    gw.wait(task_id)
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page)
    for path, name in (("/console/", "dashboard"), ("/console/messages", "messages"),
                       (f"/console/messages/{task_id}", "timeline"), ("/console/apps", "apps"),
                       ("/console/rules", "rules"), ("/console/providers", "providers")):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than the phone"
        shots.take(page, f"phone-{name}")
