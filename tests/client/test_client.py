"""``graft.client.Client`` against a real admin over HTTP: folders uploaded with a report, the server's errors as
typed exceptions, the token and URL found where ``graft serve`` leaves them, jobs followed to their verdict."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from graft.client import (
    Client,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServiceUnreachableError,
    UnauthorizedError,
    UnprocessableError,
)  # fmt: skip
from graft.client.config import ENDPOINTS_FILE, TOKEN_FILE, resolve, write_endpoints
from tests.client.conftest import Admin
from tests.support.auth import ADMIN_TOKEN, SAMPLES_TOKEN
from tests.support.images import png, write
from tests.support.waiting import wait_ready


def photos(root: Path, per_label: int, seed: int = 100) -> Path:
    for i in range(per_label):
        write(root / "ants" / f"a{i}.png", png(seed + i))
        write(root / "bees" / f"b{i}.png", png(seed + 1000 + i))
    return root


def test_a_folder_is_uploaded_in_batches_with_a_report(admin: Admin, tmp_path: Path) -> None:
    folder = photos(tmp_path / "new", 5)
    write(folder / "bees" / "broken.png", b"\x89PNG\r\n\x1a\n not really")  # refused by the server, alone
    write(folder / "bees" / "notes.txt", b"not an image")  # never sent
    write(folder / "stray.png", png(7))  # no label folder
    seen: list[tuple[int, int]] = []
    with Client(admin.url, ADMIN_TOKEN) as c:
        wait_ready(c.http)
        report = c.upload_folder(folder, progress=lambda done, total: seen.append((done, total)), batch_files=4)
        assert report.stored == 10 and report.duplicates == 0, report.as_dict()
        assert report.by_label["ants"]["stored"] == 5 and report.by_label["bees"]["stored"] == 5
        assert report.holdout == sum(c["holdout"] for c in report.by_label.values())
        assert [Path(f).name for f, _ in report.refused] == ["broken.png"] and report.refused[0][1]
        assert {Path(f).name for f, _ in report.skipped} == {"notes.txt", "stray.png"}
        assert seen[0] == (0, 11) and seen[-1] == (11, 11) and len(seen) >= 4, seen
        assert c.stats()["since_champion"] == 10
        # the same folder again: all duplicates, nothing new stored
        again = c.upload_folder(folder / "ants", label="ants")
        assert again.stored == 0 and again.duplicates == 5


def test_errors_are_typed_and_carry_the_servers_fields(admin: Admin) -> None:
    with Client(admin.url, "wrong-token") as c:
        with pytest.raises(UnauthorizedError) as e:
            c.models()
        assert e.value.status == 401 and e.value.type == "AuthenticationError" and "GRAFT_TOKEN" in str(e.value)
    with Client(admin.url, SAMPLES_TOKEN) as c, pytest.raises(ForbiddenError) as f:
        c.models()
    assert f.value.status == 403 and f.value.message
    with Client(admin.url, ADMIN_TOKEN) as c:
        with pytest.raises(NotFoundError) as n:
            c.job("no-such-job")
        assert n.value.status == 404 and n.value.body["error"]["status"] == 404
        with pytest.raises(UnprocessableError) as u:
            c.retrain(overrides={"no_such_setting": 1})
        assert "no_such_setting" in u.value.message
        with pytest.raises(ConflictError):
            c.rollback()  # nothing to roll back to yet
    with Client("http://127.0.0.1:9", ADMIN_TOKEN) as c, pytest.raises(ServiceUnreachableError) as s:
        c.models()
    assert "graft serve" in str(s.value)


def test_url_and_token_come_from_the_state_folder(admin: Admin, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    state = tmp_path / "served"
    write_endpoints(state, {"admin_url": admin.url})
    (state / TOKEN_FILE).write_text(ADMIN_TOKEN + "\n")
    with Client(state_dir=state) as c:
        assert c.url == admin.url and c.endpoint.token_source == str(state / TOKEN_FILE)
        assert c.models()["default"] == "1"
    monkeypatch.setenv("GRAFT_STATE_DIR", str(state))
    monkeypatch.setenv("GRAFT_TOKEN", "from-env")
    assert resolve().token == "from-env" and resolve().url == admin.url, "the environment wins over the folder"
    assert resolve(token="arg").token == "arg"
    monkeypatch.setenv("GRAFT_URL", "http://example.invalid:1")
    assert resolve().url == "http://example.invalid:1"
    assert json.loads((state / ENDPOINTS_FILE).read_text()) == {"admin_url": admin.url}


def test_a_job_handle_follows_the_job_to_the_gates_verdict(admin: Admin, tmp_path: Path) -> None:
    with Client(admin.url, ADMIN_TOKEN) as c:
        c.upload_folder(photos(tmp_path / "new", 4))
        admin.quality(0.95)
        phases: list[str] = []
        job = c.retrain(epochs=3).wait(timeout=60, poll_s=0.1, on_progress=lambda j: phases.append(j.phase))
        assert job.status == "succeeded" and job.promoted and job.candidate_version == "2", job.data
        assert job.progress == 1.0 and len(phases) >= 2 and "promoted version 2" in job.reason
        assert c.models()["default"] == "2"
        assert c.rollback()["version"] == "1" and c.models()["default"] == "1"
        assert c.promote("2")["version"] == "2"
        assert [j["id"] for j in c.jobs()] == [job.id]


def test_a_retrain_body_that_is_not_json_is_told_to_be(admin: Admin) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.post(f"{admin.url}/v1/retrain", content=b"epochs=3", headers={**headers,
                   "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 415, r.text
    assert "Content-Type: application/json" in r.json()["error"]["message"]
    r = httpx.post(f"{admin.url}/v1/retrain", json={"epochs": "many"}, headers=headers)
    assert r.status_code == 422, "JSON still validates as before"
