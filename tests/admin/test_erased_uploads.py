"""A picture erased through the review queue (``DELETE /v1/review/{id}``) stays erased: a later upload of it (the same
pixels or a near-duplicate, by the rule erasure uses) is refused with a 409 and nothing stored, a later capture of it
is erased as it is indexed, across restarts; only its fingerprint is kept. Real admin over HTTP, real SQLite."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from admin.server import AdminServer
from tests.admin.test_api import settings
from tests.admin.test_review import Served
from tests.console.test_pages import csrf_of, sign_in
from tests.support.auth import ADMIN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import photo
from tests.support.waiting import wait_ready

EXTRA = {"evaluate": fake_evaluate, "export": placeholder_export}


def upload(c: httpx.Client, data: bytes, label: str = "ants", name: str = "x.png") -> httpx.Response:
    return c.post("/v1/samples", files={"file": (name, data, "image/png")}, data={"label": label}, headers=SAMPLER)


def total(c: httpx.Client) -> int:
    return int(c.get("/v1/samples/stats", headers=ADMIN).json()["total"])


def stored_files(state: Path) -> list[bytes]:
    return [f.read_bytes() for f in state.rglob("*") if f.is_file() and f.suffix in (".png", ".jpg", ".jpeg")]


def test_an_erased_picture_is_refused_when_uploaded_again(tmp_path: Path, free_port: int) -> None:
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    data, near, other = photo(60), photo(60, fmt="JPEG", quality=85), photo(61)
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        served = Served(c, st.capture_path, server)
        assert upload(c, data).status_code == 201, "stored before anyone asked for its erasure"
        cid = served.capture(data, 0.6)
        assert c.get(f"/v1/review/{cid}", headers=SAMPLER).status_code == 200, "indexed (a duplicate of the sample)"
        r = c.delete(f"/v1/review/{cid}", headers=ADMIN)
        assert r.status_code == 200 and len(r.json()["samples"]) == 1, r.text
        assert total(c) == 0

        for what, body in (("the same bytes", data), ("a re-encoded copy", near)):
            r = upload(c, body)
            assert r.status_code == 409, (what, r.text)
            error: dict[str, Any] = r.json()["error"]
            assert error["type"] == "ErasedPictureError", what
            assert cid in error["message"] and "at someone's request" in error["message"], error
            when = re.search(r"erased on (\S+) ", error["message"])
            assert when is not None and when.group(1).startswith("20"), "the date of the erasure"
        batch = [("file", ("other.png", other, "image/png")), ("file", ("again.png", data, "image/png"))]
        r = c.post("/v1/samples/batch", files=batch, data={"label": "bees"}, headers=SAMPLER)
        assert r.status_code == 409 and "item 1 ('again.png')" in r.json()["error"]["message"], r.text
        console = sign_in(server, SAMPLES_TOKEN)  # the console's upload form goes through the same intake
        form = {"X-CSRF-Token": csrf_of(console.get("/console/review").text), "Accept": "application/json"}
        r = console.post("/console/samples", files={"file": ("n.jpg", near, "image/jpeg")}, data={"label": "ants"},
                         headers=form)  # fmt: skip
        assert r.status_code == 409 and r.json()["error"]["type"] == "ErasedPictureError", r.text
        console.close()
        assert total(c) == 0 and stored_files(st.state_dir) == [], "nothing stored, not even the batch's other item"
        assert upload(c, other, "bees").status_code == 201, "another picture is stored as ever"

        later = [served.capture(data, 0.5), served.capture(near, 0.55)]
        assert [i["id"] for i in served.queue()] == [], "captured again, exact or near: never queued"
        for lid in later:
            assert c.get(f"/v1/review/{lid}", headers=SAMPLER).status_code == 410, lid
        segments = b"".join(f.read_bytes() for f in st.capture_path.joinpath("graft").glob("*.seg"))
        assert data not in segments and near not in segments, "their bytes erased as they were indexed"
        refused = c.get("/metrics").text
        assert 'graft_admin_samples_rejected_total{reason="ErasedPictureError"} 4.0' in refused

    # A new process: the erasure is read from the database, not remembered by the last one.
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        assert upload(c, near).status_code == 409, "still refused after a restart"
        assert total(c) == 1

    db = sqlite3.connect(st.db_path)
    rows = db.execute("SELECT capture_id, pixels_sha, phash FROM erased_pictures").fetchall()
    db.close()
    assert [r[0] for r in rows] == [cid]
    assert re.fullmatch(r"[0-9a-f]{64}", rows[0][1]) and re.fullmatch(r"[0-9a-f]{16}", rows[0][2]), "hashes only"
    kept = b"".join(f.read_bytes() for f in st.state_dir.rglob("*") if f.is_file())
    assert data not in kept and near not in kept, "no copy of the picture anywhere in the admin's state"
