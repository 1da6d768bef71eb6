"""The console in a real headless browser (Debian's chromium + chromium-driver, installed by
``ctxpipe.infra.packages.ensure_browser`` when missing), over the API on the per-test stack:
every page loads, a trace shows what the API answered, the rebuild diff runs, and a key of
tenant acme never shows tenant globex's data.

Screenshots of each page go to ``$CTX_CONSOLE_SCREENSHOTS`` when set (docs/console/ holds
the ones linked from docs/console.md), else to the test's temporary folder."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from ctxpipe.core.settings import Settings
from ctxpipe.infra.packages import ensure_browser
from ctxpipe.streams.publisher import Publisher

from support.console import KEYS, ConsoleServer, with_keys

SECRET = "GLOBEX-ONLY-7731"


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = ensure_browser(notify=lambda m: print(f"console tests: {m}", flush=True))
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CTX_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shot(driver: WebDriver, folder: Path, name: str) -> None:
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, max(700, min(height + 40, 3000)))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def _until(what: str, check: Callable[[], Any], timeout_s: float = 60, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def _msg(run: str, i: int, tenant: str, scope: str, text: str, role: str = "user") -> dict[str, Any]:
    return {"event_id": f"{run}-{tenant}-{i}", "tenant": tenant, "scope": scope, "kind": "message",
            "role": role, "content": text, "metadata": {"i": i, "channel": "web"}}


def _populate(srv: ConsoleServer, run: str, acme_scope: str, globex_scope: str) -> None:
    ks = srv.settings.kafka
    acme = [_msg(run, i, "acme", acme_scope, text, role) for i, (text, role) in enumerate([
        ("My order ORD-1001 has not arrived yet.", "user"),
        ("Sorry to hear that, let me check ORD-1001.", "assistant"),
        ("It was supposed to come on Monday <b>not bold</b>.", "user"),
        ("The carrier shows a delay until Thursday.", "assistant")])]
    acme.append({"event_id": f"{run}-acme-fact", "tenant": "acme", "scope": acme_scope, "kind": "fact",
                 "content": "The customer's account id is AC-7781.", "metadata": {"pinned": True}})
    globex = [_msg(run, i, "globex", globex_scope, f"{SECRET} globex turn {i}") for i in range(3)]

    async def publish() -> list[Any]:
        async with Publisher(ks) as pub:
            positions = await pub.publish(acme + globex)
        # Two records the worker must dead-letter, one per tenant.
        async with Publisher(ks, validate=False) as raw:
            await raw.publish_raw(orjson.dumps({"tenant": "acme", "scope": acme_scope, "kind": "bogus"}),
                                  f"acme/{acme_scope}".encode())
            await raw.publish_raw(orjson.dumps({"tenant": "globex", "scope": globex_scope, "kind": SECRET}),
                                  f"globex/{globex_scope}".encode())
        return positions

    positions = srv.call(publish())
    assert srv.runtime is not None
    srv.call(srv.runtime.hot.wait_applied(ks.source_topic, [(p.partition, p.offset) for p in positions],
                                          timeout_s=120), timeout_s=150)


def _login(driver: WebDriver, base: str, key: str) -> None:
    driver.get(f"{base}/console/windows")
    assert "/console/login" in driver.current_url  # keys configured: the console asks first
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "login").click()
    # The login page's own URL carries next=/console/windows, so wait on the path, and on the
    # page's tenant badge: the URL changes before the new document is parsed.
    WebDriverWait(driver, 30).until(lambda d: urlsplit(d.current_url).path == "/console/windows"
                                    and d.find_elements(By.ID, "viewer-tenant"))


def _window_row(driver: WebDriver, base: str, trace_id: str) -> bool:
    driver.get(f"{base}/console/windows")
    return bool(driver.find_elements(By.CSS_SELECTOR, f'tr[data-trace="{trace_id}"]'))


def _sections_shown(driver: WebDriver) -> dict[str, dict[str, Any]]:
    out = {}
    for sec in driver.find_elements(By.CSS_SELECTOR, "div.section"):
        out[sec.get_attribute("data-section") or ""] = {
            "budget": int(sec.find_element(By.CSS_SELECTOR, ".budget").text),
            "used": int(sec.find_element(By.CSS_SELECTOR, ".used").text),
            "events": [r.get_attribute("data-event") for r in sec.find_elements(By.CSS_SELECTOR, "tr.item")],
        }
    return out


def _check_window(driver: WebDriver, api: dict[str, Any], raw_id: str | None = None) -> None:
    """What the page shows equals the API's JSON for the same window."""
    assert driver.find_element(By.ID, "used-tokens").text == str(api["used_tokens"])
    assert driver.find_element(By.ID, "budget-tokens").text == str(api["budget_tokens"])
    shown = _sections_shown(driver)
    assert shown == {s["name"]: {"budget": s["budget_tokens"], "used": s["used_tokens"],
                                 "events": [i["event_id"] for i in s["items"]]} for s in api["sections"]}
    assert orjson.loads(driver.find_element(By.ID, "payload").text) == api["anthropic"]
    cached = [b for b in api["anthropic"]["system"] if "cache_control" in b]
    assert bool(driver.find_elements(By.ID, "cache-breakpoint")) == bool(cached)
    if raw_id is not None:
        assert orjson.loads(driver.find_element(By.ID, raw_id).get_attribute("textContent") or "") == api


@pytest.mark.slow
def test_console_pages_on_a_populated_stack(test_settings: Settings, browser: WebDriver, shots: Path) -> None:
    run = uuid.uuid4().hex[:6]
    acme_scope, globex_scope = f"chat:{run}", f"support:{run}"
    with ConsoleServer(with_keys(test_settings)) as srv:
        _populate(srv, run, acme_scope, globex_scope)
        base, driver = srv.base, browser
        with httpx.Client(base_url=base, timeout=60) as http:
            def ask(tenant: str, scope: str, query: str) -> dict[str, Any]:
                r = http.post("/v1/context", headers={"X-API-Key": KEYS[tenant]},
                              json={"tenant": tenant, "scope": scope, "query": query, "budget_tokens": 400})
                assert r.status_code == 200, r.text
                doc: dict[str, Any] = r.json()
                return doc

            acme = ask("acme", acme_scope, "when will ORD-1001 arrive?")
            globex = ask("globex", globex_scope, "what did I say?")
            acme_view = http.get(f"/v1/scopes/acme/{acme_scope}", headers={"X-API-Key": KEYS["acme"]}).json()

        # -- windows: acme's key lists acme's window, never globex's.
        _login(driver, base, KEYS["acme"])
        assert driver.find_element(By.ID, "viewer-tenant").text == "acme"
        _until("acme's window in the list", lambda: _window_row(driver, base, acme["trace_id"]))
        assert not driver.find_elements(By.CSS_SELECTOR, f'tr[data-trace="{globex["trace_id"]}"]')
        assert {r.get_attribute("data-tenant") for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-trace]")} == {"acme"}
        driver.get(f"{base}/console/windows?tenant=globex")  # asking for another tenant changes nothing
        assert globex["trace_id"] not in driver.page_source and SECRET not in driver.page_source
        driver.get(f"{base}/console/windows")
        _shot(driver, shots, "windows")

        # -- trace: what the API answered, then the rebuild diff.
        driver.find_element(By.CSS_SELECTOR, f'tr[data-trace="{acme["trace_id"]}"] a.trace-link').click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "trace-id"))
        assert driver.find_element(By.ID, "trace-id").text == acme["trace_id"]
        _check_window(driver, acme, raw_id="raw")
        omitted_shown = len(driver.find_elements(By.CSS_SELECTOR, "#omitted tbody tr"))
        assert omitted_shown == len(acme["omitted"])
        assert orjson.loads(driver.find_element(By.ID, "request").text)["query"] == "when will ORD-1001 arrive?"
        driver.find_element(By.ID, "rebuild").click()
        verdict = WebDriverWait(driver, 240, poll_frequency=1).until(
            lambda d: d.find_elements(By.ID, "rebuild-verdict") or d.find_elements(By.CSS_SELECTOR, "#rebuild-result.error"))
        assert verdict[0].get_attribute("id") == "rebuild-verdict", verdict[0].text
        assert verdict[0].text.startswith("identical"), driver.find_element(By.ID, "rebuild-diff").text
        assert acme["trace_id"] in driver.find_element(By.ID, "rebuild-diff").text
        _shot(driver, shots, "trace")

        # -- pipeline: positions equal the tiers' applied offsets; acme's dead letter only.
        assert srv.runtime is not None
        applied = srv.call(srv.runtime.hot.applied_offsets(topic=test_settings.kafka.source_topic))
        driver.get(f"{base}/console/pipeline")
        rows = driver.find_elements(By.CSS_SELECTOR, "#partitions tbody tr")
        assert len(rows) == test_settings.kafka.partitions
        for row in rows:
            p = int(row.get_attribute("data-partition") or -1)
            assert int(row.find_element(By.CSS_SELECTOR, ".applied").text) == applied.get(p, -1)
        assert int(driver.find_element(By.CSS_SELECTOR, '[data-counter="in"]').text) >= 9

        def dead_letter_shown() -> bool:
            driver.get(f"{base}/console/pipeline")
            return bool(driver.find_elements(By.CSS_SELECTOR, "#dead-letters td.reason"))

        _until("acme's dead letter", dead_letter_shown)
        reasons = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#dead-letters td.reason")]
        assert len(reasons) == 1 and "bogus" in driver.find_element(By.CSS_SELECTOR, "#dead-letters .value").text
        assert SECRET not in driver.page_source
        assert driver.find_element(By.ID, "serving-version").text == "base"
        assert driver.find_element(By.CSS_SELECTOR, "#health td").text == "ok"
        _shot(driver, shots, "pipeline")

        # -- scopes: the list and one scope, as GET /v1/scopes answers.
        driver.get(f"{base}/console/scopes")
        listed = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#scopes a")]
        assert acme_scope in listed and globex_scope not in listed
        _shot(driver, shots, "scopes")
        driver.find_element(By.LINK_TEXT, acme_scope).click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "recent"))
        recent = [r.get_attribute("data-event") for r in driver.find_elements(By.CSS_SELECTOR, "#recent tbody tr[data-event]")]
        assert recent == [i["event_id"] for i in acme_view["hot"]["recent"]]
        facts = [r.get_attribute("data-event") for r in driver.find_elements(By.CSS_SELECTOR, "#facts tbody tr[data-event]")]
        assert facts == [i["event_id"] for i in acme_view["hot"]["facts"]] == [f"{run}-acme-fact"]
        assert int(driver.find_element(By.ID, "semantic-chunks").text) == acme_view["semantic"]["chunks"]
        assert "&lt;b&gt;not bold&lt;/b&gt;" in driver.page_source  # event text is escaped, never markup
        _shot(driver, shots, "scope")
        for forbidden in (f"/console/scopes/globex/{globex_scope}", f"/console/windows/globex/{globex['trace_id']}"):
            driver.get(base + forbidden)
            assert "403" in driver.title and SECRET not in driver.page_source, forbidden

        # -- try: the window rendered next to its raw JSON; the tenant is the key's.
        driver.get(f"{base}/console/try?scope={acme_scope}")
        assert driver.find_element(By.ID, "tenant").get_attribute("value") == "acme"
        driver.execute_script("document.getElementById('tenant').value = 'globex'")  # a tampered form
        driver.find_element(By.ID, "query").send_keys("what is my account id?")
        driver.find_element(By.ID, "budget").clear()
        driver.find_element(By.ID, "budget").send_keys("600")
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "raw"))
        tried = orjson.loads(driver.find_element(By.ID, "raw").text)
        assert tried["tenant"] == "acme" and tried["budget_tokens"] == 600
        _check_window(driver, tried)
        assert "AC-7781" in driver.find_element(By.ID, "blocks").text
        _shot(driver, shots, "try")

        # -- globex's key: globex's window, none of acme's.
        driver.get(f"{base}/console/logout")
        _login(driver, base, KEYS["globex"])
        _until("globex's window in the list", lambda: _window_row(driver, base, globex["trace_id"]))
        assert acme["trace_id"] not in driver.page_source and "ORD-1001" not in driver.page_source


@pytest.mark.slow
def test_a_wrong_key_is_refused_and_nothing_is_shown(test_settings: Settings, browser: WebDriver) -> None:
    with ConsoleServer(with_keys(test_settings)) as srv:
        browser.delete_all_cookies()
        browser.get(f"{srv.base}/console/pipeline")
        assert "/console/login" in browser.current_url
        browser.find_element(By.ID, "key").send_keys("not-a-key")
        browser.find_element(By.ID, "login").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "login-error"))
        with pytest.raises(NoSuchElementException):
            browser.find_element(By.ID, "partitions")
        with httpx.Client(base_url=srv.base, timeout=30) as http:
            assert http.get("/console/windows").status_code == 303
            # The page asked for comes back after login whole, its own query included.
            asked = http.get("/console/windows", params={"tenant": "acme", "degraded": "yes"})
            assert asked.headers["location"] == "/console/login?next=/console/windows%3Ftenant%3Dacme%26degraded%3Dyes"
            form = http.get(asked.headers["location"]).text
            assert 'value="/console/windows?tenant=acme&amp;degraded=yes"' in form
            assert http.post("/console/try", content=b"tenant=acme").status_code == 401
            assert http.get("/console/windows", headers={"X-API-Key": KEYS["acme"]}).status_code == 200


def test_without_keys_the_console_is_open_to_every_tenant(test_settings: Settings) -> None:
    with ConsoleServer(test_settings) as srv, httpx.Client(base_url=srv.base, timeout=60) as http:
        traces = {}
        for tenant in ("acme", "globex"):
            r = http.post("/v1/context", json={"tenant": tenant, "scope": "s1", "query": "hi", "budget_tokens": 300})
            assert r.status_code == 200, r.text
            traces[tenant] = r.json()["trace_id"]

        def listed() -> bool:
            page = http.get("/console/windows").text
            return all(t in page for t in traces.values())

        _until("both tenants' windows", listed, timeout_s=30)
        only = http.get("/console/windows", params={"tenant": "globex"}).text
        assert traces["globex"] in only and traces["acme"] not in only
        # Neither window is degraded or waited for writes: the filters say so.
        fine = http.get("/console/windows", params={"degraded": "no", "pending": "no"}).text
        assert all(t in fine for t in traces.values())
        for flag in ("degraded", "pending"):
            flagged = http.get("/console/windows", params={flag: "yes"}).text
            assert not any(t in flagged for t in traces.values()), flag
        assert all(t in http.get("/console/windows", params={"scope": "s1"}).text for t in traces.values())
        assert not any(t in http.get("/console/windows", params={"scope": "s2"}).text for t in traces.values())
        trace = http.get(f"/console/windows/globex/{traces['globex']}")
        assert trace.status_code == 200 and 'id="trace-id"' in trace.text
        # The window is keyed by tenant: acme's trace id under globex is not found.
        assert http.get(f"/console/windows/globex/{traces['acme']}").status_code == 404
        pipeline = http.get("/console/pipeline")
        assert "open API: all tenants" in pipeline.text
        assert pipeline.headers["x-frame-options"] == "DENY" and "default-src 'self'" in pipeline.headers[
            "content-security-policy"] and pipeline.headers["cache-control"] == "no-store"
        # Try: more scopes accepted; bad numbers and a budget too small are a 422 on the form, never a 500.
        form = {"tenant": "acme", "scope": "s1", "query": "hi", "budget_tokens": "300", "scopes": "s2, s3"}
        tried = http.post("/console/try", data=form)
        assert tried.status_code == 200 and 'id="raw"' in tried.text
        for bad, why in (({"budget_tokens": "abc"}, "whole numbers"), ({"budget_tokens": "1"}, "below the minimum"),
                         ({"tenant": "a/b"}, "tenant"), ({"max_recent": "-5"}, "max_tokens")):
            refused = http.post("/console/try", data={**form, **bad})
            assert refused.status_code == 422 and why in refused.text and 'id="errors"' in refused.text, bad
