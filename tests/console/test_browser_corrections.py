"""The review page's undo and key order in a real headless Chromium, against the real admin (no TorchServe:
captures come from the handler's own writer): label by key, undo by key, the item comes back and its sample
is gone; a sample relabelled from its thumbnail's page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.server import AdminServer
from handlers.capture import CaptureWriter
from tests.admin.test_api import settings
from tests.console.test_browser import browser, css, grid_ids, shot, sign_in, until
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import photo
from tests.support.waiting import wait_for, wait_ready

pytestmark = [pytest.mark.browser]
__all__ = ["browser"]  # the module's fixture, shared


@pytest.fixture
def admin(tmp_path: Path, free_port: int) -> Iterator[tuple[AdminServer, Path]]:
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as srv:
        with httpx.Client(base_url=srv.url) as c:
            wait_ready(c)
        yield srv, st.capture_path


def test_label_then_undo_by_keyboard(browser: Any, admin: tuple[AdminServer, Path]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    srv, captures = admin
    d, url = browser, srv.url
    api = httpx.Client(base_url=url)
    assert api.post("/v1/labels", json={"name": "wasps"}, headers=ADMIN).status_code == 201
    written: list[str] = []
    writer = CaptureWriter(captures, "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: written.extend([outcome] * n))  # fmt: skip
    for i in range(3):
        writer.offer(photo(300 + i), [0.55 + i / 10, 0.45 - i / 10], str(i))
    wait_for(lambda: len(written) == 3, 10, what="captures")
    wait_for(lambda: api.get("/v1/review/stats", headers=SAMPLER).json()["queued"] == 3, 10, what="indexing")
    sign_in(d, url, SAMPLES_TOKEN)
    d.get(f"{url}/console/review")
    until(d, lambda d: len(grid_ids(d)) == 3, what="the queue")
    assert "1 ants" in css(d, ".keys")[0].text and "3 wasps" in css(d, ".keys")[0].text
    first = grid_ids(d)[0]
    ActionChains(d).send_keys("3").perform()  # wasps
    until(d, lambda d: first not in grid_ids(d), what="the decision")
    (item,) = [i for i in api.get("/v1/review", params={"status": "labelled"}, headers=SAMPLER).json()["items"]]
    assert item["id"] == first and item["label"] == "wasps"
    sample = item["sample_id"]
    ActionChains(d).send_keys("u").perform()
    until(d, lambda d: grid_ids(d)[:1] == [first], what="the undone item back in front")
    assert "undone: labelled wasps" in css(d, "#progress")[0].text
    assert api.get(f"/v1/samples/{sample}", headers=ADMIN).status_code == 404, "its sample went with it"
    ActionChains(d).send_keys("s").perform()
    until(d, lambda d: first not in grid_ids(d), what="the skip")
    css(d, "#undo")[0].click()
    until(d, lambda d: grid_ids(d)[:1] == [first], what="the skip undone by the button")
    shot(d, "review-undo")


def test_relabel_from_a_thumbnail(browser: Any, admin: tuple[AdminServer, Path]) -> None:
    srv, _ = admin
    d, url = browser, srv.url
    sid = httpx.post(f"{url}/v1/samples", files={"file": ("a.png", photo(400), "image/png")}, data={"label": "ants"},
                     headers=ADMIN).json()["id"]  # fmt: skip
    sign_in(d, url, ADMIN_TOKEN)
    d.get(f"{url}/console/samples")
    shot(d, "samples")
    css(d, f'a[href="/console/samples/{sid}"]')[0].click()
    until(d, lambda d: d.current_url.endswith(f"/console/samples/{sid}"), what="the sample's page")
    css(d, "#relabel")[0].send_keys("bees")
    css(d, "form[action$='/relabel'] button")[0].click()
    until(d, lambda d: "Relabelled" in d.page_source, what="the relabel")
    shot(d, "sample-relabelled")
    assert httpx.get(f"{url}/v1/samples/{sid}", headers=ADMIN).json()["label"] == "bees"


def test_a_review_card_is_one_choice_not_a_button_per_label(browser: Any, admin: tuple[AdminServer, Path]) -> None:
    """Each card has one select (the model's answer chosen) and a submit; choosing another label and submitting
    stores it, with the session's CSRF token, and the keys still label the selected card."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    srv, captures = admin
    d, url = browser, srv.url
    api = httpx.Client(base_url=url)
    for name in ("wasps", "hornets", "flies"):
        assert api.post("/v1/labels", json={"name": name}, headers=ADMIN).status_code == 201
    written: list[str] = []
    writer = CaptureWriter(captures, "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: written.extend([outcome] * n))  # fmt: skip
    for i in range(2):
        writer.offer(photo(500 + i), [0.7, 0.3], str(i))  # the model said "ants"
    wait_for(lambda: len(written) == 2, 10, what="captures")
    wait_for(lambda: api.get("/v1/review/stats", headers=SAMPLER).json()["queued"] == 2, 10, what="indexing")
    sign_in(d, url, SAMPLES_TOKEN)
    d.get(f"{url}/console/review")
    until(d, lambda d: len(grid_ids(d)) == 2, what="the queue")
    assert "smallest margin first" in css(d, "#order")[0].text, "the current order is shown"
    first, second = grid_ids(d)
    card = css(d, f'#grid li[data-id="{first}"]')[0]
    label_buttons = [b for b in card.find_elements("css selector", "button") if b.text not in ("Label", "skip", "none")]
    assert label_buttons == [], "no button per label"
    choice = Select(card.find_element("css selector", "form.choice select"))
    assert [o.get_attribute("value") for o in choice.options] == ["ants", "bees", "wasps", "hornets", "flies"]
    assert choice.first_selected_option.get_attribute("value") == "ants", "the model's answer is preselected"
    shot(d, "review-card-choice")
    choice.select_by_value("hornets")
    card.find_element("css selector", "form.choice button[type=submit]").click()
    until(d, lambda d: first not in grid_ids(d), what="the decision")
    labelled = api.get("/v1/review", params={"status": "labelled"}, headers=SAMPLER).json()["items"]
    assert [(i["id"], i["label"]) for i in labelled] == [(first, "hornets")]
    ActionChains(d).send_keys("2").perform()  # the keyboard flow is unchanged: 2 = bees on the selected card
    until(d, lambda d: second not in grid_ids(d), what="the keyed decision")
    labelled = api.get("/v1/review", params={"status": "labelled"}, headers=SAMPLER).json()["items"]
    assert {(i["id"], i["label"]) for i in labelled} == {(first, "hornets"), (second, "bees")}


def test_the_data_check_s_samples_are_relabelled_together_from_the_job_page(browser: Any, tmp_path: Path,
                                                                           free_port: int) -> None:  # fmt: skip
    """A held job's page in a real browser: select the listed samples, type the right label, relabel them all."""
    from tests.admin.test_data_check import TintEnv, held_job

    env = TintEnv(tmp_path, free_port)
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        job, wrong = held_job(api, env, 12_000)
        d, url = browser, server.url
        sign_in(d, url, ADMIN_TOKEN)
        d.get(f"{url}/console/jobs/{job['id']}")
        boxes = css(d, "input[name=ids]")
        assert sorted(b.get_attribute("value") for b in boxes) == sorted(wrong)
        chosen = [b.get_attribute("value") for b in boxes[:10]]
        for box in boxes[:10]:
            box.click()
        css(d, "#bulk-label")[0].send_keys("ants")
        css(d, "button[value=relabel]")[0].click()
        until(d, lambda d: "relabel: 10 done" in d.page_source, what="the relabel")
        shot(d, "job-relabelled-together")
        labels = {sid: api.get(f"/v1/samples/{sid}").json()["label"] for sid in wrong}
        assert sorted(sid for sid, label in labels.items() if label == "ants") == sorted(chosen)
