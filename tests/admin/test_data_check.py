"""The data check in a real job, through the HTTP API: a batch of wrong labels holds the candidate for an admin
and lists exactly those samples; clean data goes through; relabelling the wrong ones lets the next job serve;
a label the samples token changed counts as new; ``note`` only reports.

The models see colour (``tint_evaluate``, in the evaluation child process like the default): reddish pictures are
ants, bluish ones bees, so an uploaded red picture labelled "bees" is a wrong label the champion disagrees with.
The stand-in trainer's candidate sees colour too, so the gate (a tie) passes it: what stops it is the check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from admin.runners.local import LocalJobRunner
from admin.server import AdminServer
from graft.cli import main
from graft.client.jobs import Job
from graft.client.render import verdict
from tests.admin.test_jobs import Env, retrain
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FAKE_TRAINER, placeholder_export, tint_evaluate, tint_evaluate_unranked, write_toy_card
from tests.support.images import tinted, write
from tests.support.waiting import wait_ready


class TintEnv(Env):
    """Base data whose colour says the label; the first model's card lists it (so its training images are known)."""

    def __init__(self, tmp_path: Path, port: int):
        super().__init__(tmp_path, port)
        for split, n in (("train", 3), ("val", 10)):
            for k, label in enumerate(("ants", "bees")):
                for old in (self.base / split / label).glob("*"):
                    old.unlink()
                for i in range(n):
                    write(self.base / split / label / f"{i}.png", tinted(900_000 + 1000 * k + 100 * len(split) + i,
                                                                         red=label == "ants"))  # fmt: skip
        write_toy_card(self.initial, ["ants", "bees"], 0.6, dataset_path=self.base)

    def server(self, evaluate: Any = tint_evaluate, **overrides: Any) -> AdminServer:
        runner = LocalJobRunner(command=FAKE_TRAINER, env=self.runner_env)
        extra = {"evaluate": evaluate, "export": placeholder_export}
        overrides.setdefault("samples_token", SAMPLES_TOKEN)
        return AdminServer(self.settings(**overrides), runner=runner, rollout=self.rollout, app_kwargs=extra)


@pytest.fixture
def env(tmp_path: Path, free_port: int) -> TintEnv:
    return TintEnv(tmp_path, free_port)


@pytest.fixture
def api(env: TintEnv) -> Iterator[httpx.Client]:
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
        wait_ready(c)
        yield c


def upload(c: httpx.Client, seed: int, label: str, red: bool, headers: dict[str, str] | None = None) -> str:
    r = c.post("/v1/samples", files={"file": (f"t{seed}.png", tinted(seed, red), "image/png")},
               data={"label": label}, headers=headers)  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def clean_batch(c: httpx.Client, start: int, n: int = 8) -> None:
    for i in range(n):
        upload(c, start + i, "ants", True)
        upload(c, start + 100 + i, "bees", False)


def held_job(api: httpx.Client, env: TintEnv, start: int) -> tuple[dict[str, Any], list[str]]:
    """A clean batch and 12 red pictures labelled bees (their ids), retrained: the job ends held."""
    clean_batch(api, start)
    wrong = [upload(api, start + 500 + i, "bees", True) for i in range(12)]
    job = retrain(api, env, 0.6)
    assert job["status"] == "held" and not job["promoted"], job
    return job, wrong


def test_a_batch_of_wrong_labels_holds_the_candidate_and_lists_exactly_them(env: TintEnv, api: httpx.Client) -> None:
    job, wrong = held_job(api, env, 1000)
    check = job["data_check"]
    assert check["flagged"] == ["bees"] and check["champion"] == "1"
    assert sorted(s["id"] for s in check["suspects"]) == sorted(wrong), "the wrong labels, and nothing else"
    assert {s["predicted"] for s in check["suspects"]} == {"ants"} and check["suspect_count"] == 12
    # Ranked by the champion's probabilities (scored in the evaluation's child process): the likeliest wrong first.
    given = [s["label_probability"] for s in check["suspects"]]
    assert given == sorted(given) and all(0 < p < 0.5 for p in given), given
    assert all(s["confidence"] == pytest.approx(1 - s["label_probability"]) for s in check["suspects"])
    bees = next(t for t in check["labels"] if t["label"] == "bees")
    assert (bees["new"], bees["disagreed"], bees["baseline"], bees["missed"]) == (20, 12, 10, 0)
    ants = next(t for t in check["labels"] if t["label"] == "ants")
    assert not ants["flagged"] and ants["disagreed"] == 0
    assert "held for an admin" in job["reason"] and "data check found new 'bees' samples" in job["reason"]
    assert "disagrees with 12 of 20 new 'bees' samples" in job["reason"], job["reason"]
    assert "POST /v1/models/2/promote" in job["reason"]
    assert env.rollout.default_version("graft") == "1", "nothing changed in service"
    words = verdict(Job(None, job["id"], job))  # type: ignore[arg-type]  # what `graft retrain --wait` prints
    assert words.startswith("held: version 2 waits for an admin") and "review: 12 sample(s)" in words, words
    top = check["suspects"][0]
    assert f"{top['id'][:12]} (bees, the model says ants {top['confidence']:.2f})" in words, words

    # The admin corrects them; the next job finds nothing unusual and serves its candidate.
    for sid in wrong:
        r = api.patch(f"/v1/samples/{sid}", json={"label": "ants"})
        assert r.status_code == 200, r.text
    job = retrain(api, env, 0.6)
    assert job["status"] == "succeeded" and job["promoted"], job
    assert job["data_check"]["flagged"] == [] and env.rollout.default_version("graft") == "3"


def test_clean_data_is_not_held(env: TintEnv, api: httpx.Client) -> None:
    clean_batch(api, 3000, 12)
    job = retrain(api, env, 0.6)
    assert job["status"] == "succeeded" and job["promoted"], job
    check = job["data_check"]
    assert check["flagged"] == [] and check["checked"] == 24 and "data check" not in job["reason"]
    assert {t["label"]: t["baseline"] for t in check["labels"]} == {"ants": 10, "bees": 10}, "the first model's val"


def test_a_label_the_samples_token_changed_counts_as_new(env: TintEnv, api: httpx.Client) -> None:
    clean_batch(api, 4000)
    mine = [upload(api, 4500 + i, "ants", True, SAMPLER) for i in range(12)]
    job = retrain(api, env, 0.6)
    assert job["status"] == "succeeded" and job["data_check"]["flagged"] == [], job
    trained = [sid for sid in mine if api.get(f"/v1/samples/{sid}").json()["split"] == "train"]
    assert len(trained) >= 6, "the hash split put most of them in training"
    for sid in trained:  # after the champion learnt them right, the uploader turns them into bees
        r = api.patch(f"/v1/samples/{sid}", json={"label": "bees"}, headers=SAMPLER)
        assert r.status_code == 200, r.text
    job = retrain(api, env, 0.6)
    assert job["status"] == "held", job
    assert sorted(s["id"] for s in job["data_check"]["suspects"]) == sorted(trained)


def test_note_only_reports(env: TintEnv) -> None:
    with env.server(label_check="note") as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
        wait_ready(c)
        clean_batch(c, 5000)
        for i in range(12):
            upload(c, 5500 + i, "bees", True)
        job = retrain(c, env, 0.6)
    assert job["status"] == "succeeded" and job["promoted"], job
    assert job["data_check"]["flagged"] == ["bees"] and "data check: version 1 disagrees with 12 of" in job["reason"]


@contextlib.contextmanager
def held_on_console(env: TintEnv, start: int) -> Iterator[tuple[httpx.Client, httpx.Client, dict[str, Any], list[str],
                                                                str]]:  # fmt: skip
    """A held job (its wrong labels' ids), the API, and an admin's console session with the job's page."""
    from tests.console.test_pages import sign_in

    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        job, wrong = held_job(api, env, start)
        c = sign_in(server, ADMIN_TOKEN)
        yield api, c, job, wrong, c.get(f"/console/jobs/{job['id']}").text


def test_the_console_job_page_shows_the_samples_to_review(env: TintEnv) -> None:
    from tests.console.test_job_pages import text_of

    with held_on_console(env, 6000) as (_api, c, job, wrong, page):
        # Each suspect: a thumbnail of the sample's image, linking to its page (relabel or delete there).
        thumb = r'<a href="/console/samples/([0-9a-f]{64})"><img src="/console/samples/\1/image"'
        linked = set(re.findall(thumb, page))
        assert linked == set(wrong), page
        words = text_of(page)
        assert "New samples to review" in words and "uploaded as bees, the model says ants (" in words
        assert "held: the data check lists samples to review, an admin decides" in words, words
        assert "adds labels" not in words
        first = job["data_check"]["suspects"][0]
        assert f"the model says ants ({100 * first['confidence']:.1f}% sure)" in words, words
        assert c.get(f"/console/samples/{wrong[0]}/image").status_code == 200


def test_listed_samples_hold_later_jobs_until_an_admin_decides(env: TintEnv) -> None:
    """More clean data would dilute a batch below the test's reach; what was listed stays listed until reviewed."""
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        first, wrong = held_job(api, env, 7000)
    # A level no batch reaches: the test finds nothing new, the listed samples alone hold the candidate.
    with env.server(label_check_alpha=1e-12) as server, httpx.Client(base_url=server.url, headers=ADMIN,
                                                                       timeout=30) as api:  # fmt: skip
        wait_ready(api)
        clean_batch(api, 7100)
        job = retrain(api, env, 0.6)
        check = job["data_check"]
        assert job["status"] == "held" and check["flagged"] == [] and check["needs_review"], job
        assert sorted(s["id"] for s in check["unreviewed"]) == sorted(wrong) and check["unreviewed_from"] == [
            first["id"]]
        assert "the data check has samples nobody reviewed yet" in job["reason"], job["reason"]
        given = [s["label_probability"] for s in check["unreviewed"]]
        assert None not in given and given == sorted(given), "as the first job scored them, likeliest wrong first"
        assert f"12 sample(s) listed by job {first['id']} not reviewed yet" in job["reason"], job["reason"]
        # Relabelled or deleted: reviewed. The rest still hold the next candidate.
        for sid in wrong[:6]:
            assert api.patch(f"/v1/samples/{sid}", json={"label": "ants"}).status_code == 200
        for sid in wrong[6:9]:
            assert api.delete(f"/v1/samples/{sid}").status_code == 200
        job = retrain(api, env, 0.6)
        assert job["status"] == "held" and sorted(s["id"] for s in job["data_check"]["unreviewed"]) == sorted(
            wrong[9:]), job["data_check"]
        # An admin who puts that candidate in service accepts its data: the next job has nothing to review.
        version = job["candidate_version"]
        assert api.post(f"/v1/models/{version}/promote").status_code == 200
        clean_batch(api, 7200, 4)
        job = retrain(api, env, 0.6)
        assert job["status"] == "succeeded" and job["data_check"]["unreviewed"] == [], job["data_check"]
        assert env.rollout.default_version("graft") == job["candidate_version"]


def test_the_command_line_lists_the_samples_and_corrects_them(env: TintEnv, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`graft suspects`, `graft relabel` and `graft delete`, run as a user runs them, against the real admin."""

    def graft(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        monkeypatch.setenv("GRAFT_URL", server.url)
        monkeypatch.setenv("GRAFT_TOKEN", ADMIN_TOKEN)
        assert graft("suspects") == (0, "no recent job's data check lists samples to review\n", "")
        job, wrong = held_job(api, env, 8000)
        status, out, _ = graft("suspects")  # the newest job that lists samples: this one
        assert status == 0 and f"job {job['id']} (held): 12 sample(s) to look at" in out, out
        assert f"{server.url}/console/jobs/{job['id']}" in out and "graft relabel ID... --label LABEL" in out
        rows = [line.split() for line in out.splitlines() if re.match(r"[0-9a-f]{64} ", line)]
        assert [r[0] for r in rows] == [s["id"] for s in api.get(f"/v1/jobs/{job['id']}").json()["data_check"][
            "suspects"]], "the check's order: the likeliest wrong label first"  # fmt: skip
        assert sorted(r[0] for r in rows) == sorted(wrong) and {(r[1], r[3]) for r in rows} == {("bees", "ants")}
        assert "p(label)" in out and all(float(r[2]) < 0.5 and 0.5 < float(r[4]) <= 1 for r in rows), out
        status, out, _ = graft("suspects", job["id"], "--ids")
        assert status == 0 and sorted(out.split()) == sorted(wrong)
        assert graft("suspects", "nosuchjob")[0] == 2

        # Ten relabelled (one of them twice: already done), one deleted, one unknown id refused: the rest go on.
        status, out, err = graft("relabel", *wrong[:10], wrong[0], "f" * 64, "--label", "ants")
        assert status == 1 and f"refused  {'f' * 64}: " in err and "no sample" in err, err
        assert out.splitlines()[:10] == [f"{sid}: bees -> ants" for sid in wrong[:10]]
        assert out.splitlines()[10] == f"{wrong[0]}: already ants"
        assert [api.get(f"/v1/samples/{sid}").json()["label"] for sid in wrong[:10]] == ["ants"] * 10
        status, out, err = graft("delete", wrong[10], "--json")
        assert status == 0 and json.loads(out)["deleted"]["id"] == wrong[10], out + err
        assert api.get(f"/v1/samples/{wrong[10]}").status_code == 404
        status, _, err = graft("relabel", wrong[11], "--label", "bess")
        assert status == 1 and "bess" in err, err  # a typo of a known label: refused, nothing stored
        assert api.get(f"/v1/samples/{wrong[11]}").json()["label"] == "bees"
        assert graft("delete", wrong[11])[0] == 0
        monkeypatch.setenv("GRAFT_TOKEN", "x" * 40)  # a wrong token fails every id alike: refused once, status 2
        assert graft("relabel", *wrong[:3], "--label", "bees")[:2] == (2, "")
        monkeypatch.setenv("GRAFT_TOKEN", ADMIN_TOKEN)
        assert [api.get(f"/v1/samples/{sid}").json()["label"] for sid in wrong[:3]] == ["ants"] * 3
        status, out, _ = graft("status")
        assert status == 0 and f"last job {job['id']}: held: " in out, out
        assert graft("promote", job["candidate_version"])[0] == 0
        status, out, _ = graft("status")
        assert f"held, then put in service by an admin (version {job['candidate_version']})" in out, out
        # Every listed sample reviewed: the next job holds nothing and serves its candidate.
        job = retrain(api, env, 0.6)
        assert job["status"] == "succeeded" and job["data_check"]["unreviewed"] == [], job["data_check"]


def test_without_the_model_s_probabilities_the_samples_are_listed_unranked(
    env: TintEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The ranking is a convenience: when its pass fails, the job still holds and lists every suspect, by id."""
    caplog.set_level(logging.WARNING, logger="admin.domain.job_gate")
    with env.server(evaluate=tint_evaluate_unranked) as server, httpx.Client(base_url=server.url, headers=ADMIN,
                                                                             timeout=30) as api:  # fmt: skip
        wait_ready(api)
        job, wrong = held_job(api, env, 9000)
    suspects = job["data_check"]["suspects"]
    assert [s["id"] for s in suspects] == sorted(wrong) and {s["confidence"] for s in suspects} == {None}
    assert "listed unranked" in caplog.text and "the ranking pass failed" in caplog.text, caplog.text



def test_an_admin_who_confirms_a_label_takes_it_out_of_the_check(env: TintEnv, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Some listed samples are wrong (relabelled), some right after all (confirmed, `graft confirm`): the next job
    neither checks nor lists the confirmed ones, so nothing holds it."""
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        monkeypatch.setenv("GRAFT_URL", server.url)
        monkeypatch.setenv("GRAFT_TOKEN", ADMIN_TOKEN)
        job, wrong = held_job(api, env, 10_000)
        right, fix = wrong[:4], wrong[4:]
        assert main(["confirm", *right, "--label", "ants"]) == 1, "not the label they have: refused"
        assert capsys.readouterr().err.count("labelled 'bees' now, not 'ants'") == 4
        assert main(["confirm", *right, "--label", "bees"]) == 0
        assert capsys.readouterr().out.splitlines() == [f"{sid}: bees confirmed" for sid in right]
        for sid in fix:
            assert api.patch(f"/v1/samples/{sid}", json={"label": "ants"}).status_code == 200
        job = retrain(api, env, 0.6)
        check = job["data_check"]
        assert job["status"] == "succeeded" and job["promoted"], job
        assert check["unreviewed"] == [] and check["flagged"] == [] and check["suspects"] == [], check
        assert "4 sample(s) whose label an admin confirmed are not checked" in check["notes"], check["notes"]
        bees = next(t for t in check["labels"] if t["label"] == "bees")
        assert bees["new"] == 8, "the clean batch's 8 bees; the 4 confirmed ones are not checked"


def test_the_job_page_relabels_confirms_and_deletes_the_selected_samples(env: TintEnv) -> None:
    from tests.console.test_job_pages import text_of
    from tests.console.test_pages import csrf_of, sign_in

    with held_on_console(env, 11_000) as (api, c, job, wrong, page):
        assert page.count('type="checkbox" name="ids"') == 12 and "Confirm selected" in page
        csrf, url = csrf_of(page), f"/console/jobs/{job['id']}/samples"
        assert c.post(url, data={"ids": wrong[:2], "action": "delete"}).status_code == 403, "no CSRF"
        for bad in ({"action": "burn", "ids": wrong[:1]}, {"action": "relabel", "ids": wrong[:1]},
                    {"action": "delete"}, {"action": "delete", "ids": ["f" * 64]}):  # fmt: skip
            assert c.post(url, data={**bad, "csrf": csrf}).status_code == 400, bad
        flood = c.post(url, data={"ids": wrong * 40, "action": "delete", "csrf": csrf})  # 480 fields, over the cap
        assert flood.status_code == 400 and all(api.get(f"/v1/samples/{sid}").status_code == 200 for sid in wrong)
        r = c.post(url, data={"ids": wrong[:8], "action": "relabel", "label": "ants", "csrf": csrf})
        assert r.status_code == 303, r.text
        assert "relabel: 8 done" in text_of(c.get(r.headers["location"]).text)
        api.patch(f"/v1/samples/{wrong[8]}", json={"label": "ants"})  # changed by someone else meanwhile
        r = c.post(url, data={"ids": wrong[8:11], "action": "confirm", "csrf": csrf})
        words = text_of(c.get(r.headers["location"]).text)
        assert "confirm: 2 done; refused: " in words and "labelled 'ants' now, not 'bees'" in words, words
        r = c.post(url, data={"ids": wrong[11:], "action": "delete", "csrf": csrf})
        assert "delete: 1 done" in text_of(c.get(r.headers["location"]).text)
        assert [api.get(f"/v1/samples/{sid}").json()["label"] for sid in wrong[:11]] == ["ants"] * 9 + ["bees"] * 2
        assert api.get(f"/v1/samples/{wrong[11]}").status_code == 404
        assert [e["action"] for e in api.get("/v1/audit", params={"action": "sample.confirm"}).json()["entries"]] \
            == ["sample.confirm"] * 2  # fmt: skip
        assert api.post(f"/v1/models/{job['candidate_version']}/promote").status_code == 200
        words = text_of(c.get(f"/console/jobs/{job['id']}").text)
        assert f"held, then put in service by an admin: version {job['candidate_version']} is in service" in words
        job = retrain(api, env, 0.6)
        assert job["status"] == "succeeded" and job["data_check"]["unreviewed"] == [], job["data_check"]
        sampler = sign_in(SimpleNamespace(url=str(api.base_url).rstrip("/")), SAMPLES_TOKEN)  # type: ignore[arg-type]
        assert sampler.post(url, data={"ids": wrong[:1], "action": "delete", "csrf": csrf}).status_code == 403
