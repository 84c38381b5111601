"""The console in a real headless Chromium (Debian's, through Selenium) against the real admin and a real
TorchServe: sign in with each token and a wrong one, label review items by keyboard, upload by the form,
retrain and watch the job end, promote and roll back from the Models page, and a form without its CSRF
token refused. Screenshots of every page go to build/screenshots/ (GRAFT_SCREENSHOTS to change it)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.auth import ADMIN_TOKEN, SAMPLES_TOKEN
from tests.support.live import Loop, jpegs, live_loop
from tests.support.paths import REPO
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.torchserve]

SHOTS = Path(os.environ.get("GRAFT_SCREENSHOTS", REPO / "build" / "screenshots"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: 'make setup' installs Debian's chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed ('make setup' installs the dev extra)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.implicitly_wait(0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, mobilenet_weights: Path, java: str
         ) -> Iterator[Loop]:  # fmt: skip
    with live_loop(tmp_path_factory.mktemp("console"), hymenoptera, mobilenet_weights) as lp:
        yield lp


def until(d: Any, check: Callable[[Any], Any], timeout: float = 30, what: str = "the page") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Live pages replace the elements they update: one found just before a refresh is stale, look again.
    wait = WebDriverWait(d, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(check, f"timed out waiting for {what}")


def css(d: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(d.find_elements(By.CSS_SELECTOR, selector))


def grid_ids(d: Any) -> list[str]:
    """Read in one script call: the grid re-renders under the test's feet."""
    return list(d.execute_script("return [...document.querySelectorAll('#grid li')].map(li => li.dataset.id)"))


def sign_in(d: Any, url: str, token: str) -> None:
    d.delete_all_cookies()
    d.get(f"{url}/console/login")
    (field,) = css(d, "#token")
    field.send_keys(token)
    css(d, "form button[type=submit]")[0].click()
    until(d, lambda d: "/console/login" not in d.current_url or css(d, ".error"), what="sign-in to finish")


def shot(d: Any, name: str) -> None:
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def test_sign_in_with_each_token_and_a_wrong_one(browser: Any, loop: Loop) -> None:
    d, url = browser, loop.admin.url
    sign_in(d, url, "this-is-not-a-token-at-all")
    assert "/console/login" in d.current_url and "not valid" in css(d, ".error")[0].text
    shot(d, "login-refused")
    sign_in(d, url, SAMPLES_TOKEN)
    assert d.current_url.endswith("/console/review")
    nav = [a.text for a in css(d, "nav a")]
    assert nav == ["Samples", "Review"], "a labeller sees only what it may use"
    d.get(f"{url}/console/models")
    assert "403" in d.title or "403" in css(d, "h1")[0].text
    sign_in(d, url, ADMIN_TOKEN)
    assert d.current_url.endswith("/console")
    assert [a.text for a in css(d, "nav a")] == ["Overview", "Models", "Jobs", "Samples", "Review", "History"]
    assert "version 1" in css(d, ".big")[0].text
    for img in css(d, "img"):
        assert img.get_attribute("alt"), "every image has alt text"
    shot(d, "overview")


def test_label_the_review_queue_by_keyboard(browser: Any, loop: Loop) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    d, url = browser, loop.admin.url
    files = jpegs(loop.data, "val", "ants")[40:46] + jpegs(loop.data, "val", "bees")[40:46]
    for f in files:
        assert loop.predict(f.read_bytes()).status_code == 200
    wait_for(lambda: loop.labeller.get("/v1/review/stats").json()["queued"] >= len(files), 60, what="captures")
    before = loop.api.get("/v1/samples/stats").json()["total"]
    sign_in(d, url, SAMPLES_TOKEN)
    d.get(f"{url}/console/review")
    until(d, lambda d: len(grid_ids(d)) >= len(files), what="the grid")
    margins = [float(t.split("margin ")[1]) for t in d.execute_script(
        "return [...document.querySelectorAll('#grid li .answer')].map(p => p.textContent)")]
    assert margins == sorted(margins), "most uncertain first"
    shot(d, "review")
    first = grid_ids(d)[0]
    for key, expected in (("1", "labelled"), ("2", "labelled"), ("s", "skipped"), ("x", "rejected")):
        current = d.execute_script("return document.querySelector('#grid li.selected').dataset.id")
        ActionChains(d).send_keys(key).perform()
        until(d, lambda d, c=current: c not in grid_ids(d), what=f"item {current} to leave the grid after '{key}'")
        status = loop.labeller.get(f"/v1/review/{current}").json()["status"]
        assert status == expected, (key, status)
    assert "4 decided on this page" in css(d, "#progress")[0].text
    assert loop.labeller.get(f"/v1/review/{first}").json()["label"] == "ants", "key 1 is the first label"
    assert loop.api.get("/v1/samples/stats").json()["total"] == before + 2
    stats = loop.labeller.get("/v1/review/stats").json()
    assert stats["skipped"] >= 1 and stats["rejected"] >= 1
    d.set_window_size(390, 844)  # a phone
    d.get(f"{url}/console/review")
    until(d, lambda d: grid_ids(d), what="the grid at phone width")
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(d, "review-phone")
    d.set_window_size(1280, 900)


def test_upload_by_the_form(browser: Any, loop: Loop) -> None:
    d, url = browser, loop.admin.url
    sign_in(d, url, SAMPLES_TOKEN)
    d.get(f"{url}/console/samples")
    before = loop.api.get("/v1/samples/stats").json()["total"]
    css(d, "#label")[0].send_keys("bees")
    paths = [str(p) for p in jpegs(loop.data, "train", "bees")[50:52]]
    css(d, "#file")[0].send_keys("\n".join(paths))
    css(d, "#upload button[type=submit]")[0].click()
    until(d, lambda d: css(d, "p.ok"), what="the upload to be acknowledged")
    assert "Stored 2 new image(s)" in css(d, "p.ok")[0].text
    assert loop.api.get("/v1/samples/stats").json()["total"] == before + 2
    assert len(css(d, ".thumbs img")) >= 2
    shot(d, "samples")


def test_retrain_watch_promote_and_roll_back(browser: Any, loop: Loop) -> None:
    d, url = browser, loop.admin.url
    sign_in(d, url, ADMIN_TOKEN)
    d.get(f"{url}/console/jobs")
    css(d, "form[action='/console/retrain'] button")[0].click()
    until(d, lambda d: "/console/jobs/" in d.current_url, what="the job page")
    shot(d, "job-running")
    final = until(d, lambda d: (s := css(d, "[data-field=status]")) and s[0].text in ("succeeded", "rejected", "failed",
                                                                                        "held") and s[0].text,
                  timeout=900, what="the job to end (the page follows it live)")  # fmt: skip
    assert final == "succeeded", css(d, "[data-field=reason]")[0].text
    assert "log" in css(d, "pre.log")[0].get_attribute("class")
    shot(d, "job")
    new = loop.api.get("/v1/models").json()["default"]
    assert new != "1"
    d.get(f"{url}/console/models")
    shot(d, "models")
    css(d, "a[href='/console/rollback']")[0].click()
    assert "Roll back to version 1" in css(d, "h1")[0].text
    assert any("becomes the default" in li.text for li in css(d, "main li")), "the confirmation says what changes"
    shot(d, "confirm-rollback")
    css(d, "#confirm")[0].click()
    until(d, lambda d: "/console/models?changed=" in d.current_url, what="back on the models page")
    assert loop.api.get("/v1/models").json()["default"] == "1"
    css(d, f"a[href='/console/models/{new}/promote']")[0].click()
    css(d, "#confirm")[0].click()
    until(d, lambda d: "/console/models?changed=" in d.current_url, what="back on the models page")
    assert loop.api.get("/v1/models").json()["default"] == new
    d.get(f"{url}/console/models/{new}")
    until(d, lambda d: css(d, "figure.plot img"), what="the model's plots")
    # the images load after the page (lazily): wait for them; each must decode
    script = "return [...document.querySelectorAll('figure.plot img')].every(i => i.complete && i.naturalWidth > 0)"
    until(d, lambda d: d.execute_script(script), what="the learning curves and confusion matrix to load")
    shot(d, "model")


def test_a_form_without_its_csrf_token_is_refused(browser: Any, loop: Loop) -> None:
    d, url = browser, loop.admin.url
    sign_in(d, url, ADMIN_TOKEN)
    cookie = {c["name"]: c["value"] for c in d.get_cookies()}
    jobs_before = len(loop.api.get("/v1/jobs").json()["jobs"])
    r = httpx.post(f"{url}/console/retrain", data={}, cookies=cookie)
    assert r.status_code == 403 and "CSRF" in r.text
    r = httpx.post(f"{url}/console/rollback", data={"csrf": "guessed"}, cookies=cookie)
    assert r.status_code == 403
    d.execute_script("document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'tampered')")
    d.get(f"{url}/console/jobs")
    d.execute_script("document.querySelector('form[action=\"/console/retrain\"] input[name=csrf]').value = 'x'")
    css(d, "form[action='/console/retrain'] button")[0].click()
    # one look per poll: the page may be between documents, with no h1 on a second look
    until(d, lambda d: any("403" in h.text for h in css(d, "h1")), what="the refusal page")
    shot(d, "csrf-refused")
    time.sleep(0.5)
    assert len(loop.api.get("/v1/jobs").json()["jobs"]) == jobs_before, "nothing started"
