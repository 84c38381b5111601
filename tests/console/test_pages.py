"""The console over real HTTP (no browser): sign-in and cookies, who sees what, CSRF, headers, every page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.console.actions import retrain_request
from admin.server import AdminServer
from handlers.capture import CaptureWriter
from tests.admin.test_api import settings
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import image_folder, photo
from tests.support.waiting import wait_for, wait_ready


@pytest.fixture
def server(tmp_path: Path, free_port: int) -> Iterator[tuple[AdminServer, Path]]:
    base = image_folder(tmp_path / "base", {"train": 2, "val": 3})
    st = settings(tmp_path, admin_port=free_port, base_data=base, capture_scan_s=0.2)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as srv:
        with httpx.Client(base_url=srv.url) as c:
            wait_ready(c)
        yield srv, st.capture_path


def sign_in(srv: AdminServer, token: str) -> httpx.Client:
    c = httpx.Client(base_url=srv.url, follow_redirects=False)
    r = c.post("/console/login", data={"token": token, "next": "/console/models"})
    assert r.status_code == 303, r.text
    return c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def test_sign_in_sets_a_strict_session_cookie(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    anon = httpx.Client(base_url=srv.url, follow_redirects=False)
    r = anon.get("/console/models")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?next=/console/models"
    assert anon.post("/console/retrain", data={}).status_code == 401, "no body is read without a session"
    assert anon.get("/console/api/jobs/x").status_code == 401
    bad = anon.post("/console/login", data={"token": "not-the-token-0123456789"})
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    c = sign_in(srv, ADMIN_TOKEN)
    cookie = c.cookies.jar
    (jar,) = list(cookie)
    assert jar.name == "graft_console" and jar.path == "/console" and jar.expires is not None
    raw = c.post("/console/login", data={"token": ADMIN_TOKEN}).headers["set-cookie"].lower()
    assert "httponly" in raw and "samesite=strict" in raw and "max-age=28800" in raw
    assert "secure" not in raw.replace("samesite", ""), "plain HTTP here: Secure would lose the cookie"
    tls = httpx.Client(base_url=srv.url, follow_redirects=False)
    over_tls = tls.post("/console/login", data={"token": ADMIN_TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert "; secure" in over_tls.headers["set-cookie"].lower()
    page = c.get("/console/models")
    assert page.status_code == 200 and "Models" in page.text
    for header, value in (("content-security-policy", "script-src 'self'"), ("x-frame-options", "DENY"),
                          ("cache-control", "no-store")):  # fmt: skip
        assert value in page.headers[header]
    out = c.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert c.get("/console/models").status_code == 303, "signed out: the old session id is dead"


def test_every_admin_page_renders(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    c = sign_in(srv, ADMIN_TOKEN)
    for path in ("/console", "/console/models", "/console/models/1", "/console/jobs", "/console/samples",
                 "/console/review", "/console/models/1/promote"):  # fmt: skip
        r = c.get(path)
        assert r.status_code in (200, 409), (path, r.status_code, r.text[:300])
        assert "<html" in r.text and 'name="csrf"' in r.text
    assert c.get("/console/models/99").status_code == 404
    assert "graft_console" not in c.get("/console/models/99").text
    assert c.get("/console/rollback").status_code == 409, "nothing to roll back to: said on a page"
    assert c.get("/console/static/console.css").status_code == 200


def test_the_samples_token_labels_and_uploads_only(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    c = sign_in(srv, SAMPLES_TOKEN)
    assert c.get("/console").headers["location"] == "/console/review"
    review = c.get("/console/review")
    assert review.status_code == 200
    assert 'href="/console/models"' not in review.text and 'href="/console/jobs"' not in review.text
    for path in ("/console/models", "/console/jobs", "/console/models/1/promote", "/console/rollback"):
        assert c.get(path).status_code == 403, path
    csrf = csrf_of(review.text)
    assert c.post("/console/rollback", data={"csrf": csrf}).status_code == 403
    assert c.post("/console/retrain", data={"csrf": csrf}).status_code == 403
    files = {"file": ("a.png", photo(1), "image/png")}
    r = c.post("/console/samples", files=files, data={"label": "bees", "csrf": csrf})
    assert r.status_code == 303 and "stored=1" in r.headers["location"]
    files = {"file": ("b.png", photo(2), "image/png")}
    r = c.post("/console/samples", files=files, data={"label": "wasps", "csrf": csrf})
    assert r.status_code == 403 and "POST /v1/labels" in r.text, "new labels are the admin's"


def test_forms_without_their_csrf_token_change_nothing(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    c = sign_in(srv, ADMIN_TOKEN)
    csrf = csrf_of(c.get("/console/jobs").text)
    assert c.post("/console/retrain", data={}).status_code == 403
    assert c.post("/console/retrain", data={"csrf": "forged"}).status_code == 403
    assert httpx.get(f"{srv.url}/v1/jobs", headers=ADMIN).json()["jobs"] == []
    files = {"file": ("a.png", photo(3), "image/png")}
    assert c.post("/console/samples", files=files, data={"label": "ants"}).status_code == 403
    assert httpx.get(f"{srv.url}/v1/samples/stats", headers=ADMIN).json()["total"] == 0
    assert c.post("/console/api/review/00000000000000000001-deadbeef", json={"skip": True}).status_code == 403
    other = sign_in(srv, ADMIN_TOKEN)
    assert other.post("/console/retrain", data={"csrf": csrf}).status_code == 403, "a token is per session"


def indexed(srv: AdminServer, n: int) -> None:
    """Wait until the admin's capture index has ``n`` captures queued: written is not yet indexed (the
    background pass may lag on a busy machine, and a page read does not wait long for it)."""
    wait_for(lambda: httpx.get(f"{srv.url}/v1/review/stats", headers=ADMIN).json()["queued"] == n, 20,
             what="the captures to be indexed")  # fmt: skip


def test_review_api_labels_captures(server: tuple[AdminServer, Path]) -> None:
    srv, captures = server
    stored: list[str] = []
    writer = CaptureWriter(captures, "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: stored.extend([outcome] * n))  # fmt: skip
    for i, p in enumerate((0.55, 0.9, 0.7)):
        writer.offer(photo(40 + i), [p, 1 - p], str(i))
    wait_for(lambda: len(stored) == 3, 10, what="captures")
    indexed(srv, 3)
    c = sign_in(srv, SAMPLES_TOKEN)
    csrf = csrf_of(c.get("/console/review").text)
    body = c.get("/console/api/review").json()
    assert [round(i["margin"], 2) for i in body["items"]] == [0.1, 0.4, 0.8] and body["stats"]["queued"] == 3
    first = body["items"][0]
    assert c.get(first["image"]).status_code == 200
    r = c.post(f"/console/api/review/{first['id']}", json={"label": "bees"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["status"] == "labelled" and r.json()["stats"]["labelled"] == 1
    second = body["items"][1]["id"]
    r = c.post(f"/console/api/review/{second}", json={"reject": True}, headers={"X-CSRF-Token": csrf})
    assert r.json()["status"] == "rejected"
    bad = c.post(f"/console/api/review/{body['items'][2]['id']}", json={}, headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 400
    assert httpx.get(f"{srv.url}/v1/samples/stats", headers=ADMIN).json()["labels"]["bees"]["train"] + \
        httpx.get(f"{srv.url}/v1/samples/stats", headers=ADMIN).json()["labels"]["bees"]["holdout"] == 1


def test_labels_and_samples_are_corrected_from_the_console(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    api = httpx.Client(base_url=srv.url, headers=ADMIN)
    ids = [api.post("/v1/samples", files={"file": (f"{i}.png", photo(60 + i), "image/png")},
                    data={"label": "ants"}).json()["id"] for i in range(2)]  # fmt: skip
    c = sign_in(srv, ADMIN_TOKEN)
    csrf = csrf_of(c.get("/console/samples").text)
    assert c.post("/console/labels", data={"name": "battery", "csrf": csrf}).status_code == 303
    typo = c.post("/console/labels", data={"name": "baterry", "csrf": csrf})
    assert typo.status_code == 409 and "battery" in typo.text and "new_label" in typo.text
    page = c.get("/console/samples").text
    assert re.search(r"<kbd>3</kbd></td>\s*<th scope=\"row\"><a href=\"/console/labels/battery\">battery", page)
    assert f'href="/console/samples/{ids[0]}"' in page and '<option value="battery">' in page
    sample = c.get(f"/console/samples/{ids[0]}")
    assert sample.status_code == 200 and "Relabel" in sample.text and "Delete this sample" in sample.text
    assert c.post(f"/console/samples/{ids[0]}/relabel", data={"label": "bees"}).status_code == 403, "no CSRF"
    r = c.post(f"/console/samples/{ids[0]}/relabel", data={"label": "bees", "csrf": csrf})
    assert r.status_code == 303 and api.get(f"/v1/samples/{ids[0]}").json()["label"] == "bees"
    assert "sample.relabel" in c.get(r.headers["location"]).text, "its history is on its page"
    assert "bees is right</button>" in c.get(f"/console/samples/{ids[0]}").text
    assert c.post(f"/console/samples/{ids[0]}/confirm", data={"label": "bees"}).status_code == 403, "no CSRF"
    refused = c.post(f"/console/samples/{ids[0]}/confirm", data={"label": "ants", "csrf": csrf})
    assert refused.status_code == 409 and "labelled &#39;bees&#39; now" in refused.text, refused.text
    r = c.post(f"/console/samples/{ids[0]}/confirm", data={"label": "bees", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"].endswith("?confirmed=bees")
    confirmed = c.get(r.headers["location"]).text
    assert "Label bees confirmed" in confirmed and "<td>sample.confirm</td>" in confirmed
    r = c.post(f"/console/samples/{ids[1]}/delete", data={"csrf": csrf})
    assert r.status_code == 303 and api.get(f"/v1/samples/{ids[1]}").status_code == 404
    label = c.get("/console/labels/battery")
    assert label.status_code == 200 and "Rename" in label.text and "Merge" in label.text
    r = c.post("/console/labels/battery/rename", data={"to": "cells", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/labels/cells")
    r = c.post("/console/labels/cells/merge", data={"into": "bees", "csrf": csrf})
    assert r.status_code == 303 and "cells" not in [x["name"] for x in api.get("/v1/labels").json()["labels"]]
    assert "cannot be renamed" in c.get("/console/labels/ants").text, "a class of the model in service"
    history = c.get("/console/history").text
    for action in ("label.merge", "label.rename", "sample.delete", "sample.relabel", "label.add"):
        assert action in history, action
    only_samples = c.get("/console/history?action=sample.*").text
    assert "<td>label.merge</td>" in history and "<td>label.merge</td>" not in only_samples


def test_the_samples_token_sees_why_it_may_not_correct(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    theirs = httpx.post(f"{srv.url}/v1/samples", files={"file": ("a.png", photo(80), "image/png")},
                        data={"label": "ants"}, headers=ADMIN).json()["id"]  # fmt: skip
    c = sign_in(srv, SAMPLES_TOKEN)
    page = c.get(f"/console/samples/{theirs}")
    assert page.status_code == 403 and "only the admin token" in page.text and "Delete this sample" not in page.text
    csrf = csrf_of(c.get("/console/review").text)
    assert c.post(f"/console/samples/{theirs}/delete", data={"csrf": csrf}).status_code == 403
    assert c.post(f"/console/samples/{theirs}/confirm", data={"label": "ants", "csrf": csrf}).status_code == 403
    mine = httpx.post(f"{srv.url}/v1/samples", files={"file": ("b.png", photo(81), "image/png")},
                      data={"label": "ants"}, headers=SAMPLER).json()["id"]  # fmt: skip
    own = c.get(f"/console/samples/{mine}").text
    assert "Relabel" in own and "is right</button>" not in own, "confirming is the admin's"
    assert c.post(f"/console/samples/{mine}/confirm", data={"label": "ants", "csrf": csrf}).status_code == 403
    for path in ("/console/labels/ants", "/console/history"):
        assert c.get(path).status_code == 403, path
    assert c.post("/console/labels/ants/rename", data={"to": "x", "csrf": csrf}).status_code == 403


def test_the_review_page_undoes_and_shows_its_keys(server: tuple[AdminServer, Path]) -> None:
    srv, captures = server
    written: list[str] = []
    writer = CaptureWriter(captures, "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: written.extend([outcome] * n))  # fmt: skip
    writer.offer(photo(90), [0.6, 0.4], "r")
    wait_for(lambda: written, 10, what="the capture")
    indexed(srv, 1)
    httpx.post(f"{srv.url}/v1/labels", json={"name": "wasps"}, headers=ADMIN)
    c = sign_in(srv, SAMPLES_TOKEN)
    review = c.get("/console/review").text
    assert re.search(r"<kbd>1</kbd> ants · <kbd>2</kbd> bees · <kbd>3</kbd> wasps", review), "in key order"
    assert 'id="undo"' in review and "<kbd>u</kbd> undo" in review
    csrf = {"X-CSRF-Token": csrf_of(review)}
    (item,) = c.get("/console/api/review").json()["items"]
    assert c.post("/console/api/review/undo", headers=csrf).status_code == 409, "nothing decided yet"
    r = c.post(f"/console/api/review/{item['id']}", json={"label": "bees"}, headers=csrf)
    assert r.status_code == 200 and r.json()["stats"]["labelled"] == 1
    assert c.post(f"/console/api/review/{item['id']}/undo").status_code == 403, "no CSRF token"
    r = c.post(f"/console/api/review/{item['id']}/undo", headers=csrf)
    assert r.status_code == 200, r.text
    (back,) = r.json()["items"]
    assert (back["id"], back["undone"], back["label"]) == (item["id"], "labelled", "bees")
    assert back["sample_removed"] and r.json()["stats"]["queued"] == 1 and r.json()["stats"]["labelled"] == 0
    assert c.post(f"/console/api/review/{item['id']}", json={"skip": True}, headers=csrf).status_code == 200
    r = c.post("/console/api/review/undo", headers=csrf)
    assert r.status_code == 200 and r.json()["items"][0]["undone"] == "skipped"


def test_the_samples_token_never_sees_the_holdout(server: tuple[AdminServer, Path]) -> None:
    """The console keeps the API's rules: the samples token sees the samples it uploaded, not the split counts,
    and no picture of the admin's holdout (which judges every candidate)."""
    srv, _ = server
    admin = [httpx.post(f"{srv.url}/v1/samples", files={"file": (f"{i}.png", photo(100 + i), "image/png")},
                        data={"label": "ants"}, headers=ADMIN).json() for i in range(12)]  # fmt: skip
    holdout = [x["id"] for x in admin if x["split"] == "holdout"]
    assert holdout, "some of twelve pictures fall in the holdout (holdout_fraction 0.2)"
    c = sign_in(srv, SAMPLES_TOKEN)
    csrf = csrf_of(c.get("/console/review").text)
    r = c.post("/console/samples", files={"file": ("own.png", photo(200), "image/png")},
               data={"label": "bees", "csrf": csrf})  # fmt: skip
    assert r.status_code == 303
    page = c.get("/console/samples").text
    assert "Holdout" not in page and "samples in all" not in page and "· holdout" not in page
    assert not any(x["id"] in page for x in admin), "another token's uploads are not listed"
    (own,) = re.findall(r'href="/console/samples/([0-9a-f]{64})"', page)
    assert c.get(f"/console/samples/{own}").status_code == 200
    assert c.get(f"/console/samples/{own}/image").status_code == 200
    for sample_id in holdout:
        assert c.get(f"/console/samples/{sample_id}").status_code == 403
        assert c.get(f"/console/samples/{sample_id}/image").status_code == 403
    labels = httpx.get(f"{srv.url}/v1/labels", headers=SAMPLER).json()["labels"]
    assert all(x["train"] is None and x["holdout"] is None for x in labels), "the API says no more"
    assert httpx.get(f"{srv.url}/v1/labels", headers=ADMIN).json()["labels"][0]["holdout"] >= 1
    admin_page = sign_in(srv, ADMIN_TOKEN).get("/console/samples").text
    assert "Holdout" in admin_page and all(x in admin_page for x in holdout)


def test_the_retrain_form_is_judged_by_the_api_model(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    c = sign_in(srv, ADMIN_TOKEN)
    csrf = csrf_of(c.get("/console/jobs").text)
    for epochs in ("²", "5000", "9" * 5000, "0", "-1", "ten", "1.5"):
        r = c.post("/console/retrain", data={"epochs": epochs, "csrf": csrf})
        assert r.status_code == 422 and "epochs" in r.text and "<html" in r.text, (epochs[:10], r.status_code)
    assert httpx.get(f"{srv.url}/v1/jobs", headers=ADMIN).json()["jobs"] == [], "no job from a bad form"
    assert retrain_request({"epochs": " 3 ", "csrf": "x"}).epochs == 3
    assert retrain_request({"epochs": ""}).epochs is None


def test_the_upload_script_gets_the_reason_of_a_refusal(server: tuple[AdminServer, Path]) -> None:
    srv, _ = server
    c = sign_in(srv, SAMPLES_TOKEN)
    csrf = {"X-CSRF-Token": csrf_of(c.get("/console/review").text), "Accept": "application/json"}
    r = c.post("/console/samples", files={"file": ("a.tif", b"II*\x00" + bytes(64), "image/tiff")},
               data={"label": "ants"}, headers=csrf)  # fmt: skip
    assert r.status_code == 415 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["status"] == 415 and error["message"] and error["type"], "what the page shows after the status"
    r = c.post("/console/samples", files={"file": ("a.png", photo(7), "image/png")}, data={"label": "wasps"},
               headers=csrf)  # fmt: skip
    assert r.status_code == 403 and "POST /v1/labels" in r.json()["error"]["message"]
