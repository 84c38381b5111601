"""The console's job and model pages through real HTTP, with real jobs (the stand-in trainer, a real child
process): a rejected job reads as rejected, the first version shows the holdout score a job measured, the
recipe is a table, a running job names its champion and the retrain form says why it is gone, and the
force-promote page puts the champion's score beside the candidate's."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.server import AdminServer
from tests.admin.test_jobs import Env, post, retrain
from tests.console.test_pages import sign_in
from tests.support.auth import ADMIN_TOKEN
from tests.support.waiting import wait_for, wait_ready


@pytest.fixture
def served(env: Env) -> Iterator[tuple[AdminServer, httpx.Client]]:
    with env.server() as server, httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                              timeout=30) as api:  # fmt: skip
        wait_ready(api)
        yield server, api


@pytest.fixture
def env(tmp_path: Path, free_port: int) -> Env:
    return Env(tmp_path, free_port)


def text_of(page: str) -> str:
    """The page's words, tags dropped: what a person reads."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_a_rejected_job_reads_as_rejected_and_the_champion_gets_its_measured_holdout(
    env: Env, served: tuple[AdminServer, httpx.Client]
) -> None:
    server, api = served
    assert api.get("/v1/models/1").json()["metrics"].get("holdout") is None, "imported: nothing measured it yet"
    c = sign_in(server, ADMIN_TOKEN)
    assert "not measured yet" in text_of(c.get("/console").text)
    for seed in range(8):
        post(api, seed, ("ants", "bees")[seed % 2])
    job = retrain(api, env, quality=0.05)
    assert job["status"] == "rejected", job
    measured = job["metrics"]["champion"]

    # /v1/models: the first version now carries the score the job measured on it
    v1 = api.get("/v1/models/1").json()["metrics"]["holdout"]
    assert v1["accuracy"] == measured["accuracy"] and v1["n"] == measured["n"] and v1["measured_by_job"] == job["id"]
    listed = {m["version"]: m for m in api.get("/v1/models").json()["models"]}
    assert listed["1"]["metrics"]["holdout"]["accuracy"] == measured["accuracy"]

    overview = text_of(c.get("/console").text)
    assert "not measured yet" not in overview
    assert f"{100 * measured['accuracy']:.1f}%" in overview and f"measured by job {job['id']}" in overview

    page = c.get(f"/console/jobs/{job['id']}").text
    assert "<progress" not in page, "a finished job has no progress bar"
    assert 'class="outcome rejected"' in page
    words = text_of(page)
    assert "rejected by the gate" in words and "evaluating" not in words
    jobs = c.get("/console/jobs").text
    row = re.search(rf"<tr>\s*<th scope=\"row\"><a href=\"/console/jobs/{job['id']}\">.*?</tr>", jobs, re.S)
    assert row and "<progress" not in row.group(0) and "outcome rejected" in row.group(0)

    # force-promote: the champion's score beside the candidate's
    confirm = c.get(f"/console/models/{job['candidate_version']}/promote?force=true").text
    table = re.search(r'<table class="compare">.*?</table>', confirm, re.S)
    assert table, confirm
    cells = text_of(table.group(0))
    assert "In service now 1" in cells and "Goes into service 2" in cells
    candidate_score = api.get("/v1/models/2").json()["metrics"]["holdout"]["accuracy"]
    assert f"{100 * candidate_score:.1f}%" in cells and f"{100 * measured['accuracy']:.1f}%" in cells
    assert "compared them image by image" in text_of(confirm)


def test_the_recipe_is_a_table(env: Env, served: tuple[AdminServer, httpx.Client]) -> None:
    server, api = served
    recipe = api.get("/v1/models/1").json()["recipe"]
    assert recipe, "the toy card records a recipe"
    page = sign_in(server, ADMIN_TOKEN).get("/console/models/1").text
    section = re.search(r'<section class="card" aria-labelledby="recipe">.*?</section>', page, re.S)
    assert section, "no recipe section"
    assert "<pre" not in section.group(0) and "{" not in text_of(section.group(0)), "no raw JSON"
    rows = dict(re.findall(r'<th scope="row"><code>([^<]+)</code></th><td>([^<]*)</td>', section.group(0)))
    scalars = {k: v for k, v in recipe.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    assert scalars
    for key, value in scalars.items():
        assert key in rows, (key, rows)
        assert rows[key] == (f"{value:g}" if isinstance(value, float) else html.escape(str(value))), key


def test_a_running_job_names_its_champion_and_the_retrain_button_says_why_it_is_gone(
    env: Env, served: tuple[AdminServer, httpx.Client]
) -> None:
    server, api = served
    env.runner_env["GRAFT_FAKE_EPOCH_S"] = "2"  # long enough to look at while it trains
    post(api, 1, "ants")
    r = api.post("/v1/retrain", json={})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    try:
        c = sign_in(server, ADMIN_TOKEN)
        wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 30, what="the job to run")
        page = text_of(c.get(f"/console/jobs/{job_id}").text)
        assert "Champion version 1 (in service now" in page, page
        assert "Champion –" not in page
        jobs = c.get("/console/jobs").text
        assert "/console/retrain" not in jobs, "no retrain form while a job runs"
        assert f"Retrain is unavailable while job {job_id} runs" in text_of(jobs)
        overview = text_of(c.get("/console").text)
        assert "Retrain is unavailable while this job runs" in overview and "Against: version 1" in overview
        live = c.get(f"/console/api/jobs/{job_id}").json()
        assert live["champion"] == "1" and live["active"]
    finally:
        api.post(f"/v1/jobs/{job_id}/cancel")
        wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] not in ("queued", "running"), 60,
                 what="the job to stop")  # fmt: skip
    jobs = sign_in(server, ADMIN_TOKEN).get("/console/jobs").text
    assert 'action="/console/retrain"' in jobs, "the form is back once the job ended"


def test_the_review_page_shows_its_current_order(env: Env, served: tuple[AdminServer, httpx.Client]) -> None:
    server, _ = served
    c = sign_in(server, ADMIN_TOKEN)
    for strategy, words in (("margin", "smallest margin first"), ("entropy", "highest entropy first"),
                            ("random", "random")):  # fmt: skip
        page = c.get(f"/console/review?strategy={strategy}").text
        order = re.search(r'<strong id="order">([^<]+)</strong>', page)
        assert order and order.group(1).startswith(words), strategy
        assert f'<span class="current" aria-current="true">{strategy}</span>' in page
        assert f'href="/console/review?strategy={strategy}"' not in page, "the current order is not a link"


def test_a_held_job_says_why_it_waits() -> None:
    from types import SimpleNamespace

    from admin.console.views import _held

    def job(new_labels: bool, review: bool) -> tuple[object, dict[str, object]]:
        row = SimpleNamespace(candidate_version="3", data_check={"needs_review": review} if review else None)
        return row, {"new_labels": ["wasps"] if new_labels else []}

    assert _held(*job(True, False), "2") == "held: it adds labels, an admin decides"  # type: ignore[arg-type]
    assert _held(*job(False, True), "2") == "held: the data check lists samples to review, an admin decides"  # type: ignore[arg-type]
    assert _held(*job(True, True), None) == ("held: it adds labels and the data check lists samples to review, an "  # type: ignore[arg-type]
                                             "admin decides")  # fmt: skip
    assert _held(*job(True, True), "3").startswith("held, then put in service by an admin")  # type: ignore[arg-type]
