"""The operator console (`/console`) in a real browser: Debian's headless Chromium, driven by
Selenium, against real processes with API keys. The page loads with no console errors; without
a key it asks for one (and a key that is not an admin's is told so); a miss and a paraphrase
hit made over REST show up in the decisions table; "wrong answer" makes the next identical
request miss; "delete entry" removes the entry; deleting by attributes and flushing ask first;
the policy form sets the cache's policy. Screenshots go to each test's tmp dir."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.alert import Alert
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from service_runtime.keys import entry_for, mint_key
from tests.browser import BrowserMissing, browser_log, chromium, errors_in
from tests.fake_llm import FakeLLM
from tests.processes import GatewayProcess, cache_server_process

pytestmark = pytest.mark.slow

STORED = "How do I learn Python?"
ASKED = "How can I learn Python?"  # a paraphrase: a semantic hit on STORED
THRESHOLD = 0.8
T = TypeVar("T")


@dataclass(frozen=True)
class Stack:
    url: str
    admin_key: str  # read, write, admin on every cache: what the console needs
    app_key: str  # read, write: what an application has

    def rest(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """A call as the application makes it (the app key)."""
        headers = {"Authorization": f"Bearer {self.app_key}"}
        return httpx.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=30)

    def admin(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        reply = httpx.get(f"{self.url}{path}", headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def query(self, cache: str, question: str) -> dict[str, Any]:
        body = {"query": question, "similarity_threshold": THRESHOLD}
        reply = self.rest("POST", f"/query?cache_id={cache}", body)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, embedder_process: str) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("console")
    admin, app = mint_key(), mint_key()
    keys = [
        entry_for(admin, "operator", ["*"], ["read", "write", "admin"]),
        entry_for(app, "app", ["*"], ["read", "write"]),
    ]
    (folder / "keys.json").write_text(json.dumps({"keys": keys}))
    env = {"SEMCACHE_KEYS_FILE": str(folder / "keys.json")}
    with (
        FakeLLM() as llm,
        cache_server_process(
            folder / "data", embedder_process, "--upstream-base-url", llm.base_url, env=env
        ) as cache,
        GatewayProcess(cache.address, env=env) as gateway,
    ):
        yield Stack(gateway.url, admin, app)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    try:
        driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    except BrowserMissing as missing:
        pytest.fail(str(missing))
    yield driver
    driver.quit()


def until(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], object]) -> None:
    """Waits (20 s at most) for `condition` to hold."""
    WebDriverWait(driver, 20, poll_frequency=0.1).until(condition)


def found(driver: webdriver.Chrome, lookup: Callable[[webdriver.Chrome], T | None]) -> T:
    """Waits (20 s at most) for `lookup` to find something, and returns it."""
    result = WebDriverWait(driver, 20, poll_frequency=0.1).until(lookup)
    assert result is not None  # until() returns only a truthy value
    return result


def alert(driver: webdriver.Chrome) -> Alert:
    """The confirm() the page opened (waited for)."""
    return found(driver, lambda d: expected_conditions.alert_is_present()(d) or None)


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def open_console(driver: webdriver.Chrome, stack: Stack, cache: str, key: str | None) -> None:
    """A fresh page on `cache`, no key remembered; types `key` into the key prompt."""
    browser_log(driver)  # what earlier tests left in the log is theirs
    driver.get(f"{stack.url}/console#cache={cache}")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    until(driver, lambda d: d.find_element(By.ID, "key-panel").is_displayed())
    if key is not None:
        driver.find_element(By.ID, "key-input").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def wait_polled(driver: webdriver.Chrome) -> None:
    until(
        driver,
        lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0) > 0,
    )


def decision_row(driver: webdriver.Chrome, outcome: str, asked: str) -> WebElement:
    """The newest row of the decisions table with this outcome for this prompt (waited for)."""

    def find(d: webdriver.Chrome) -> WebElement | None:
        for row in d.find_elements(By.CSS_SELECTOR, f"#decisions tbody tr.{outcome}"):
            if row.find_element(By.CSS_SELECTOR, "td.asked").text == asked:
                return row
        return None

    return found(driver, find)


def no_errors(driver: webdriver.Chrome) -> None:
    errors = errors_in(browser_log(driver))
    assert not errors, errors


def new_cache() -> str:
    return f"console-{uuid.uuid4().hex[:8]}"


def test_the_shell_is_open_the_data_needs_an_admin_key(
    stack: Stack, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    page = httpx.get(f"{stack.url}/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<meta name="semcache-keyed" content="true">' in page.text
    script = httpx.get(f"{stack.url}/console/static/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{stack.url}/console/static/app.py").status_code == 404
    for guarded in ("/cache/stats", "/v1/caches", "/v1/caches/default/decisions"):
        assert httpx.get(f"{stack.url}{guarded}").status_code == 401, guarded

    # No key: the page asks for one, calls nothing, logs nothing.
    open_console(browser, stack, "default", key=None)
    assert not browser.find_element(By.ID, "main").is_displayed()
    browser.save_screenshot(str(tmp_path / "console-key-prompt.png"))
    no_errors(browser)

    # A key the gateway does not know: refused, said so, asked again.
    browser.find_element(By.ID, "key-input").send_keys("sc_not-a-key-0123456789")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    until(browser, lambda d: "key was refused" in text(d, "key-message"))
    assert browser.find_element(By.ID, "key-panel").is_displayed()

    # An application's key (no admin): the page says what is missing.
    browser.find_element(By.ID, "key-input").send_keys(stack.app_key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    until(browser, lambda d: "admin key is needed" in text(d, "page-message"))
    browser.save_screenshot(str(tmp_path / "console-not-admin.png"))
    # The only errors are the refused calls themselves (the browser logs each 401/403).
    for error in errors_in(browser_log(browser)):
        assert "status of 401" in error or "status of 403" in error, error


def test_a_hit_shows_up_and_wrong_answer_makes_the_next_identical_request_miss(
    stack: Stack, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    cache = new_cache()
    open_console(browser, stack, cache, stack.admin_key)
    wait_polled(browser)
    assert text(browser, "t-size") == "0"

    assert stack.query(cache, STORED)["cache_hit"] is False
    hit = stack.query(cache, ASKED)
    assert hit["cache_hit"] is True and hit["cached_data"]["cached_query"] == STORED

    decision_row(browser, "miss", STORED)
    row = decision_row(browser, "hit", ASKED)
    assert row.find_element(By.CSS_SELECTOR, "td.cached").text == STORED
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == "hit"
    until(browser, lambda d: "1 of 2 look-ups hit" in text(d, "t-hit-rate-sub"))
    browser.save_screenshot(str(tmp_path / "console-hit.png"))
    no_errors(browser)

    row.find_element(By.CSS_SELECTOR, "button.wrong").click()
    until(browser, lambda d: "reported wrong" in row.find_element(By.CSS_SELECTOR, ".status").text)
    assert stack.admin(f"/cache/stats?cache_id={cache}")["reported_wrong"] == 1

    again = stack.query(cache, ASKED)
    assert again["cache_hit"] is False and again["cached_data"] is None
    decision_row(browser, "miss", ASKED)
    until(browser, lambda d: text(d, "t-feedback") == "1 wrong")
    browser.save_screenshot(str(tmp_path / "console-reported.png"))
    no_errors(browser)


def test_delete_entry_removes_the_entry(
    stack: Stack, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    cache = new_cache()
    stored = stack.rest("POST", f"/v1/caches/{cache}/entries", {"prompt": STORED, "response": "R"})
    assert stored.status_code == 201, stored.text
    entry_id = stored.json()["entryId"]
    open_console(browser, stack, cache, stack.admin_key)
    wait_polled(browser)
    assert stack.query(cache, ASKED)["cache_hit"] is True
    row = decision_row(browser, "hit", ASKED)
    assert row.get_attribute("data-entry-id") == entry_id
    # An answer stored by Set has no known cost: the page says so.
    until(browser, lambda d: "1 hits on answers stored by Set" in text(d, "no-cost-note"))

    row.find_element(By.CSS_SELECTOR, "button.delete").click()
    confirm = alert(browser)
    assert entry_id in confirm.text and cache in confirm.text
    confirm.accept()
    until(browser, lambda d: "entry deleted" in row.find_element(By.CSS_SELECTOR, ".status").text)
    until(browser, lambda d: text(d, "t-size") == "0")
    found = stack.rest(
        "POST",
        f"/v1/caches/{cache}/entries/search",
        {"prompt": STORED, "similarityThreshold": 0.0, "maxResults": 10},
    )
    assert found.status_code == 200 and found.json()["data"] == [], found.text
    browser.save_screenshot(str(tmp_path / "console-deleted.png"))
    no_errors(browser)


def test_search_delete_by_attributes_and_flush_ask_first(
    stack: Stack, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    cache = new_cache()
    markup = 'Hola <img src=x onerror="window.injected=1">'  # shown as text, never as HTML
    for prompt, lang in ((STORED, "en"), ("Comment apprendre Python ?", "fr"), (markup, "es")):
        body = {"prompt": prompt, "response": f"answer in {lang}", "attributes": {"lang": lang}}
        assert stack.rest("POST", f"/v1/caches/{cache}/entries", body).status_code == 201
    open_console(browser, stack, cache, stack.admin_key)
    until(browser, lambda d: text(d, "t-size") == "3")

    # Search: the nearest entries, whatever their similarity.
    browser.find_element(By.ID, "search-prompt").send_keys(ASKED)
    browser.find_element(By.ID, "search-threshold").send_keys("0")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    results = found(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results tbody tr") or None
    )
    prompts = [row.find_element(By.CSS_SELECTOR, "td.prompt").text for row in results]
    assert prompts[0] == STORED and markup in prompts and len(prompts) == 3
    assert browser.execute_script("return window.injected === undefined")

    # Delete by attributes: confirm() first; "cancel" deletes nothing.
    browser.find_element(By.ID, "delete-attributes").send_keys("lang=fr")
    browser.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    confirm = alert(browser)
    assert "lang=fr" in confirm.text and cache in confirm.text
    confirm.dismiss()
    assert stack.admin(f"/cache/stats?cache_id={cache}")["cache_size"] == 3
    browser.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    alert(browser).accept()
    until(browser, lambda d: "1 entries deleted" in text(d, "delete-message"))
    assert stack.admin(f"/cache/stats?cache_id={cache}")["cache_size"] == 2

    # Flush: only once the cache's id is typed.
    browser.find_element(By.ID, "flush-start").click()
    flush = browser.find_element(By.ID, "flush-do")
    confirm_input = browser.find_element(By.ID, "flush-input")
    assert confirm_input.is_displayed() and not flush.is_enabled()
    confirm_input.send_keys("default")
    assert not flush.is_enabled()
    confirm_input.clear()
    confirm_input.send_keys(cache)
    assert flush.is_enabled()
    browser.save_screenshot(str(tmp_path / "console-flush-confirm.png"))
    flush.click()
    until(browser, lambda d: "flushed" in text(d, "flush-message"))
    assert stack.admin(f"/cache/stats?cache_id={cache}")["cache_size"] == 0
    until(browser, lambda d: text(d, "t-size") == "0")
    no_errors(browser)


def test_the_policy_form_sets_the_cache_policy(
    stack: Stack, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    cache = new_cache()
    open_console(browser, stack, cache, stack.admin_key)
    until(browser, lambda d: "the server's default" in text(d, "policy-current"))
    Select(browser.find_element(By.ID, "policy-name")).select_by_value("verified")
    browser.find_element(By.ID, "policy-rate").send_keys("0.05")
    browser.find_element(By.CSS_SELECTOR, "#policy-form button").click()
    until(browser, lambda d: "policy saved" in text(d, "policy-message"))
    policy = stack.admin(f"/v1/caches/{cache}/policy")
    assert (policy["policy"], policy["maxErrorRate"], policy["source"]) == (
        "verified",
        0.05,
        "cache",
    )
    until(browser, lambda d: text(d, "t-policy") == "verified")
    browser.save_screenshot(str(tmp_path / "console-policy.png"))
    no_errors(browser)
