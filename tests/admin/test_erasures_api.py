"""Lifting an erasure made by mistake: ``GET /v1/erasures`` lists the erasures in force (ids, dates, who; nothing of the
picture) and ``DELETE /v1/erasures/{id}`` lifts one, audited; the admin token only. Once lifted, the picture is
uploaded and captured again. Real admin over HTTP, real SQLite, and the graft client."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import httpx
import pytest

from admin.server import AdminServer
from graft.client import Client, ConflictError, ForbiddenError, NotFoundError
from tests.admin.test_api import settings
from tests.admin.test_erased_uploads import EXTRA, total, upload
from tests.admin.test_review import Served
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout
from tests.support.images import photo
from tests.support.waiting import wait_for, wait_ready


def test_an_admin_lists_and_lifts_an_erasure_and_the_picture_is_accepted_again(tmp_path: Path,
                                                                                free_port: int) -> None:  # fmt: skip
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    data, near, other = photo(80), photo(80, fmt="JPEG", quality=85), photo(81)
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        served = Served(c, st.capture_path, server)
        cid, other_cid = served.capture(data, 0.6), served.capture(other, 0.7)

        def indexed(capture_id: str) -> bool:
            return c.get(f"/v1/review/{capture_id}", headers=ADMIN).status_code == 200

        for each in (cid, other_cid):  # a page shows the last commit when the indexer's pass runs long (load)
            wait_for(partial(indexed, each), 20, what=f"capture {each} to be indexed")
        assert c.get("/v1/erasures", headers=ADMIN).json() == {"erasures": [], "total": 0}
        assert c.delete(f"/v1/review/{cid}", headers=ADMIN).status_code == 200
        refused = upload(c, near)
        assert refused.status_code == 409 and f"DELETE /v1/erasures/{cid}" in refused.json()["error"]["message"]

        page = c.get("/v1/erasures", headers=ADMIN)
        assert page.status_code == 200, page.text
        (entry,) = page.json()["erasures"]
        assert page.json()["total"] == 1
        assert set(entry) == {"id", "erased_at", "erased_by", "audit_id"}, "ids, dates and who: nothing of the picture"
        assert entry["id"] == cid and entry["erased_at"].startswith("20") and entry["erased_by"] == "admin"
        erase_entry = c.get("/v1/audit", params={"action": "review.erase"}, headers=ADMIN).json()["entries"][0]
        assert entry["audit_id"] == erase_entry["id"]
        db = sqlite3.connect(st.db_path)
        pixels, phash = db.execute("SELECT pixels_sha, phash FROM erased_pictures").fetchone()
        db.close()
        assert pixels not in page.text and phash not in page.text, "no fingerprint leaves the database"

        lifted = c.delete(f"/v1/erasures/{cid}", headers=ADMIN)
        assert lifted.status_code == 200, lifted.text
        body = lifted.json()
        assert body["id"] == cid and body["erased_at"] == entry["erased_at"] and body["lifted_by"] == "admin"
        (audited,) = c.get("/v1/audit", params={"action": "erasure.lift"}, headers=ADMIN).json()["entries"]
        assert audited["id"] == body["audit_id"] and audited["target"] == cid and audited["actor"] == "admin"
        assert audited["detail"] == {"erased_at": entry["erased_at"]}
        # At once another erasure: the table holds one row again, at the same rowid; uploads must still see the change.
        assert c.delete(f"/v1/review/{other_cid}", headers=ADMIN).status_code == 200
        assert [e["id"] for e in c.get("/v1/erasures", headers=ADMIN).json()["erasures"]] == [other_cid]
        assert upload(c, other, "bees").status_code == 409, "the new erasure holds"

        again = served.capture(data, 0.55)
        assert [i["id"] for i in served.queue()] == [again], "captured again after the lift: queued for review"
        assert c.get(f"/v1/review/{again}/image", headers=SAMPLER).content == data
        assert upload(c, near).status_code == 201, "uploaded again after the lift"
        assert total(c) == 1

        gone = c.delete(f"/v1/erasures/{cid}", headers=ADMIN)
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFoundError", gone.text
        assert "GET /v1/erasures" in gone.json()["error"]["message"]


def test_lifting_an_unknown_erasure_is_a_404(tmp_path: Path, free_port: int) -> None:
    st = settings(tmp_path, admin_port=free_port)
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        for bad in ("0000000000000000000-00000000", "not-an-id", "x" * 300, "%00", "1%27%20OR%201=1"):
            r = c.delete(f"/v1/erasures/{bad}", headers=ADMIN)
            assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError", (bad, r.text)
        r = c.delete("/v1/erasures/..%2F..%2Fdb", headers=ADMIN)  # no such route: a plain 404, never a 500
        assert r.status_code == 404, r.text


def test_only_the_admin_token_sees_or_lifts_erasures(tmp_path: Path, free_port: int) -> None:
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    data = photo(82)
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        cid = Served(c, st.capture_path, server).capture(data, 0.6)
        assert c.get(f"/v1/review/{cid}", headers=ADMIN).status_code == 200, "indexed"
        assert c.delete(f"/v1/review/{cid}", headers=SAMPLER).status_code == 403, "erasing needs the admin token"
        assert c.delete(f"/v1/review/{cid}", headers=ADMIN).status_code == 200
        for method, path in (("GET", "/v1/erasures"), ("DELETE", f"/v1/erasures/{cid}")):
            assert c.request(method, path, headers=SAMPLER).status_code == 403, (method, path)
            assert c.request(method, path).status_code == 401, (method, path)
        assert upload(c, data).status_code == 409, "the samples token lifted nothing"
        assert c.get("/v1/audit", params={"action": "erasure.lift"}, headers=ADMIN).json()["entries"] == []

        with Client(server.url, SAMPLES_TOKEN) as labeller, pytest.raises(ForbiddenError):
            labeller.lift_erasure(cid)
        with Client(server.url, ADMIN_TOKEN) as admin:
            assert [e["id"] for e in admin.erasures()] == [cid]
            assert admin.lift_erasure(cid)["id"] == cid
            assert admin.erasures() == []
            with pytest.raises(NotFoundError):
                admin.lift_erasure(cid)
            assert upload(c, data).status_code == 201, "accepted once lifted"
            fresh = Served(c, st.capture_path, server).capture(photo(83), 0.6)
            assert c.get(f"/v1/review/{fresh}", headers=ADMIN).status_code == 200, "indexed"
            assert fresh in admin.erase(fresh)["captures"], "the client erases a capture too"
            with pytest.raises(ConflictError, match="erased on"):
                admin.upload(photo(83), "ants")
