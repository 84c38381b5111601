"""Corrections through the real admin over HTTP, on SQLite: relabel, delete, rename, merge, the typo guard, the
audit trail, and the samples token's limits (its own training samples only)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.domain.samples import split_for
from admin.server import AdminServer
from graft.core.images import fingerprint
from tests.admin.test_api import settings
from tests.support.auth import ADMIN, SAMPLER
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import photo
from tests.support.waiting import error_of, wait_ready


@pytest.fixture
def admin(tmp_path: Path, free_port: int) -> Iterator[tuple[httpx.Client, AdminServer]]:
    st = settings(tmp_path, admin_port=free_port)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        yield c, server


def pictures(split: str, n: int, start: int = 0) -> list[bytes]:
    """``n`` different pictures the hash split puts in ``split`` (holdout_fraction 0.2)."""
    out, seed = [], start
    while len(out) < n:
        data = photo(seed)
        if split_for(fingerprint(data, thumb=False).pixels_sha, 0.2) == split:
            out.append(data)
        seed += 1
    return out


def post(c: httpx.Client, data: bytes | list[bytes], label: str, headers: dict[str, str] = ADMIN,
         **form: str) -> httpx.Response:  # fmt: skip
    many = isinstance(data, list)
    files = [("file", (f"{i}.png", d, "image/png")) for i, d in enumerate(data if many else [data])]
    return c.post("/v1/samples/batch" if many else "/v1/samples", files=files, data={"label": label, **form},
                  headers=headers)  # fmt: skip


def labels(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in c.get("/v1/labels", headers=ADMIN).json()["labels"]}


def audit(c: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = c.get("/v1/audit", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return list(r.json()["entries"])


def test_a_typo_is_caught_and_corrected(admin: tuple[httpx.Client, AdminServer]) -> None:
    """The issue's story: 'baterry' beside 'battery'. The guard asks first; once confirmed, the typo is fixable."""
    c, _ = admin
    assert c.post("/v1/labels", json={"name": "battery"}, headers=ADMIN).status_code == 201
    assert labels(c)["battery"]["key"] == 3, "ants 1, bees 2 (the model's), then battery"
    one, two = pictures("train", 2)
    r = post(c, one, "baterry")
    assert r.status_code == 409 and error_of(r)["type"] == "SimilarLabelError"
    assert "'battery'" in error_of(r)["message"] and "new_label=true" in error_of(r)["message"]
    assert "baterry" not in labels(c) and c.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 0
    r = post(c, one, "baterry", new_label="true")  # confirmed: it is created (the old behaviour, now explicit)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert labels(c)["battery"]["key"] == 3 and labels(c)["baterry"]["key"] == 4, "a new label never moves a key"
    r = c.delete("/v1/labels/baterry", headers=ADMIN)
    assert r.status_code == 409 and "merge" in error_of(r)["message"], "the refusal says what to do"
    r = post(c, [one, two], "battery")
    assert r.status_code == 409 and f"PATCH /v1/samples/{sid}" in error_of(r)["message"]
    r = c.patch(f"/v1/samples/{sid}", json={"label": "battery"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["sample"]["label"] == "battery" and r.json()["previous_label"] == "baterry"
    assert r.json()["sample"]["split"] == "train" and r.json()["changed"] is True
    r = post(c, [one, two], "battery")
    assert r.status_code == 201 and (r.json()["created"], r.json()["duplicates"]) == (1, 1)
    assert c.delete("/v1/labels/baterry", headers=ADMIN).status_code == 200, "no samples left: removable"
    assert list(labels(c)) == ["ants", "bees", "battery"]
    (entry,) = audit(c, action="sample.relabel")
    assert (entry["actor"], entry["target"], entry["detail"]) == ("admin", sid, {"before": "baterry",
                                                                                 "after": "battery", "split": "train"})


def test_the_typo_guard(admin: tuple[httpx.Client, AdminServer]) -> None:
    c, _ = admin
    img = iter(pictures("train", 10))
    for name in ("Bees ", "bee", "a-nts", "ánts", "ANTS-"):
        r = c.post("/v1/labels", json={"name": name}, headers=ADMIN)
        assert r.status_code in (400, 409), (name, r.text)
    assert post(c, next(img), "BEES").json()["label"] == "bees", "another case of a known label is that label"
    assert post(c, next(img), "bee").status_code == 409, "one letter off"
    assert post(c, next(img), "ánts").status_code == 409, "an accent"
    assert post(c, next(img), "wasps").status_code == 201, "far from every label: no question asked"
    r = post(c, [next(img), next(img)], "hornet")
    assert r.status_code == 201, r.text
    r = c.post("/v1/samples/batch", files=[("file", ("a.png", next(img), "image/png")),
                                           ("file", ("b.png", next(img), "image/png"))],
               data={"label": ["cable", "cables"]}, headers=ADMIN)  # fmt: skip
    assert r.status_code == 409 and "'cable'" in error_of(r)["message"], "two new close labels in one request"
    assert "cable" not in labels(c), "nothing of the batch was stored"
    r = post(c, next(img), "bee", headers=SAMPLER)
    assert r.status_code == 403 and "did you mean 'bees'" in error_of(r)["message"]
    r = post(c, next(img), "bee", headers=SAMPLER, new_label="true")
    assert r.status_code == 403, "the samples token never adds a label, confirmed or not"
    assert post(c, pictures("train", 1, 500)[0], "x", new_label="maybe").status_code == 400
    assert c.post("/v1/labels", json={"name": "bee", "new_label": True}, headers=ADMIN).status_code == 201
    assert [e["target"] for e in audit(c, action="label.add")] == ["bee", "hornet", "wasps"]


def test_delete_removes_the_row_and_the_file_but_not_under_a_running_job(admin: tuple[httpx.Client, AdminServer]
                                                                          ) -> None:  # fmt: skip
    c, server = admin
    state = server.settings.state_dir
    a, b = pictures("train", 2)
    ids = [post(c, d, "ants").json()["id"] for d in (a, b)]
    files = [next(state.glob(f"samples/*/{i}.*")) for i in ids]
    # A job is running: its snapshot (a manifest of these paths) must stay readable until it ends.
    with sqlite3.connect(server.settings.db_path) as con:
        con.execute("INSERT INTO jobs (id, status, created_at) VALUES ('j1', 'running', '2026-01-01')")
    r = c.delete(f"/v1/samples/{ids[0]}", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deleted"]["id"] == ids[0] and body["deleted"]["label"] == "ants" and "job j1" in body["file"]
    assert files[0].is_file(), "the running job may still read it"
    assert c.get(f"/v1/samples/{ids[0]}", headers=ADMIN).status_code == 404
    assert c.delete(f"/v1/samples/{ids[0]}", headers=ADMIN).status_code == 404
    assert c.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 1
    with sqlite3.connect(server.settings.db_path) as con:
        con.execute("UPDATE jobs SET status = 'failed' WHERE id = 'j1'")
    r = c.delete(f"/v1/samples/{ids[1]}", headers=ADMIN)
    assert r.json()["file"] == "deleted" and not files[0].exists() and not files[1].exists(), "both, once no job runs"
    assert post(c, a, "bees").status_code == 201, "deleted: the picture may come back under another label"
    assert next(state.glob(f"samples/*/{ids[0]}.*")).is_file()
    entries = audit(c, action="sample.delete")
    assert [e["target"] for e in entries] == [ids[1], ids[0]] and entries[0]["detail"]["label"] == "ants"
    assert c.delete("/v1/samples/" + "0" * 64, headers=ADMIN).status_code == 404


def test_the_next_snapshot_sees_the_corrected_data(admin: tuple[httpx.Client, AdminServer]) -> None:
    from admin.domain.snapshot import take_snapshot

    c, server = admin
    keep, relabel, gone = (post(c, d, "ants").json()["id"] for d in pictures("train", 3))
    assert c.patch(f"/v1/samples/{relabel}", json={"label": "bees"}, headers=ADMIN).status_code == 200
    assert c.delete(f"/v1/samples/{gone}", headers=ADMIN).status_code == 200
    snap = take_snapshot(server.app.state.service.samples, [])
    assert sorted((i.path.stem, i.label) for i in snap.items) == sorted([(keep, "ants"), (relabel, "bees")])


def test_a_holdout_sample_stays_holdout_and_bad_relabels_change_nothing(admin: tuple[httpx.Client, AdminServer]
                                                                        ) -> None:  # fmt: skip
    c, _ = admin
    (held,) = pictures("holdout", 1)
    sid = post(c, held, "ants").json()["id"]
    r = c.patch(f"/v1/samples/{sid}", json={"label": "bees"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["sample"]["split"] == "holdout"
    same = c.patch(f"/v1/samples/{sid}", json={"label": "Bees"}, headers=ADMIN)
    assert same.status_code == 200 and same.json()["changed"] is False and same.json()["audit_id"] is None
    for body, status in (({"label": "bes"}, 409), ({"label": "a/b"}, 400), ({}, 422), ({"label": "x", "y": 1}, 422)):
        r = c.patch(f"/v1/samples/{sid}", json=body, headers=ADMIN)
        assert r.status_code == status, (body, r.text)
    assert c.get(f"/v1/samples/{sid}", headers=ADMIN).json()["label"] == "bees"
    assert len(audit(c, action="sample.relabel")) == 1 and "bes" not in labels(c)
    assert c.patch("/v1/samples/" + "1" * 64, json={"label": "ants"}, headers=ADMIN).status_code == 404


def test_rename_and_merge(admin: tuple[httpx.Client, AdminServer]) -> None:
    c, _ = admin
    imgs = pictures("train", 4)
    assert post(c, imgs[:2], "hornet").status_code == 201
    assert post(c, imgs[2], "wasps").status_code == 201
    r = c.post("/v1/labels/hornet/rename", json={"to": "Hornets"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["label"]["name"], r.json()["previous"], r.json()["samples"]) == ("Hornets", "hornet", 2)
    assert labels(c)["Hornets"]["key"] == 3 and labels(c)["Hornets"]["train"] == 2, "same key, same samples"
    assert post(c, imgs[0], "hornets").json()["duplicate"] is True, "the samples follow the name"
    r = c.post("/v1/labels/ants/rename", json={"to": "ant"}, headers=ADMIN)
    assert r.status_code == 409 and "model in service" in error_of(r)["message"]
    r = c.post("/v1/labels/wasps/rename", json={"to": "bees"}, headers=ADMIN)
    assert r.status_code == 409 and "/merge" in error_of(r)["message"]
    r = c.post("/v1/labels/wasps/rename", json={"to": "hornet"}, headers=ADMIN)
    assert r.status_code == 409 and "Hornets" in error_of(r)["message"], "'hornet' is 'Hornets' by another name"
    r = c.post("/v1/labels/wasps/rename", json={"to": "bee"}, headers=ADMIN)
    assert r.status_code == 409 and error_of(r)["type"] == "SimilarLabelError"
    r = c.post("/v1/labels/wasps/merge", json={"into": "hornetz"}, headers=ADMIN)
    assert r.status_code == 404 and "rename" in error_of(r)["message"]
    assert c.post("/v1/labels/wasps/merge", json={"into": "wasps"}, headers=ADMIN).status_code == 400
    assert c.post("/v1/labels/ants/merge", json={"into": "bees"}, headers=ADMIN).status_code == 409
    assert c.post("/v1/labels/nope/merge", json={"into": "bees"}, headers=ADMIN).status_code == 404
    r = c.post("/v1/labels/Hornets/merge", json={"into": "wasps"}, headers=ADMIN)
    assert r.status_code == 200 and (r.json()["label"]["name"], r.json()["samples"]) == ("wasps", 2)
    assert list(labels(c)) == ["ants", "bees", "wasps"] and labels(c)["wasps"]["train"] == 3
    assert c.get("/v1/samples/stats", headers=ADMIN).json()["labels"] == {"wasps": {"train": 3, "holdout": 0}}
    gauges = [line for line in c.get("/metrics").text.splitlines() if line.startswith("graft_admin_samples_stored{")]
    assert gauges and not any("Hornets" in line for line in gauges), "a merged label's gauge goes with it"
    (merge,) = audit(c, action="label.merge")
    assert (merge["target"], merge["detail"]) == ("Hornets", {"into": "wasps", "samples": 2})
    assert [e["action"] for e in audit(c, action="label.*")][:2] == ["label.merge", "label.rename"]


def test_the_samples_token_corrects_its_own_training_samples_only(admin: tuple[httpx.Client, AdminServer]) -> None:
    c, _ = admin
    (mine, theirs), (held,) = pictures("train", 2), pictures("holdout", 1)
    mine_id = post(c, mine, "ants", headers=SAMPLER).json()["id"]
    held_id = post(c, held, "ants", headers=SAMPLER).json()["id"]
    theirs_id = post(c, theirs, "ants").json()["id"]
    listed = c.get("/v1/samples", headers=SAMPLER).json()["samples"]
    assert {s["id"] for s in listed} == {mine_id, held_id}, "it lists what it uploaded"
    assert {s["uploader"] for s in listed} == {"samples"}
    assert len(c.get("/v1/samples", headers=ADMIN).json()["samples"]) == 3
    for method, path, body in (("PATCH", theirs_id, {"label": "bees"}), ("DELETE", theirs_id, None),
                               ("PATCH", held_id, {"label": "bees"}), ("DELETE", held_id, None)):  # fmt: skip
        r = c.request(method, f"/v1/samples/{path}", json=body, headers=SAMPLER)
        assert r.status_code == 403, (method, path, r.text)
        assert "admin token" in error_of(r)["message"]
    r = c.patch(f"/v1/samples/{mine_id}", json={"label": "wasps"}, headers=SAMPLER)
    assert r.status_code == 403 and "POST /v1/labels" in error_of(r)["message"], "known labels only"
    r = c.patch(f"/v1/samples/{mine_id}", json={"label": "bees"}, headers=SAMPLER)
    assert r.status_code == 200 and r.json()["sample"]["label"] == "bees"
    for method, path in (("GET", "/v1/audit"), ("GET", f"/v1/samples/{mine_id}"), ("POST", "/v1/labels/bees/rename"),
                         ("POST", "/v1/labels/bees/merge")):  # fmt: skip
        assert c.request(method, path, json={"to": "x", "into": "ants"}, headers=SAMPLER).status_code == 403, path
    assert c.delete(f"/v1/samples/{mine_id}", headers=SAMPLER).status_code == 200
    stats = c.get("/v1/samples/stats", headers=ADMIN).json()["labels"]
    assert stats == {"ants": {"train": 1, "holdout": 1}}, "the others' samples and the holdout are untouched"
    assert [(e["actor"], e["action"]) for e in audit(c)[:2]] == [("samples", "sample.delete"),
                                                                 ("samples", "sample.relabel")]  # fmt: skip


def test_the_audit_trail_pages_and_filters(admin: tuple[httpx.Client, AdminServer]) -> None:
    c, _ = admin
    ids = [post(c, d, "ants").json()["id"] for d in pictures("train", 3)]
    everything = audit(c)
    assert [e["action"] for e in everything] == ["sample.add"] * 3 and [e["target"] for e in everything] == ids[::-1]
    assert everything[0]["actor"] == "admin" and everything[0]["at"].endswith("+00:00")
    page = c.get("/v1/audit", params={"limit": 2}, headers=ADMIN).json()
    assert len(page["entries"]) == 2 and page["next_before"] == page["entries"][-1]["id"]
    older = c.get("/v1/audit", params={"limit": 2, "before": page["next_before"]}, headers=ADMIN).json()
    assert [e["target"] for e in older["entries"]] == [ids[0]] and older["next_before"] is None
    assert [e["target"] for e in audit(c, target=ids[1])] == [ids[1]]
    assert audit(c, action="label.*") == []
    assert c.get("/v1/audit", params={"limit": 0}, headers=ADMIN).status_code == 422
    assert c.get("/v1/audit").status_code == 401


def test_a_deleted_sample_takes_its_frozen_features_with_it(admin: tuple[httpx.Client, AdminServer]) -> None:
    """The gate keeps the frozen stages' output per holdout image (training/frozen_features.py): when a sample's
    file is deleted, its row leaves the store on disk at once, and the other images' rows stay."""
    import numpy as np

    from graft.core.util import file_key
    from training.feature_store import FeatureStore

    c, server = admin
    state = server.settings.state_dir
    ids = [post(c, d, "ants").json()["id"] for d in pictures("holdout", 2)]
    files = [next(state.glob(f"samples/*/{i}.*")) for i in ids]
    store = FeatureStore(state / "frozen-features" / "0123")
    store.add([str(file_key(f)) for f in files], np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    assert c.delete(f"/v1/samples/{ids[0]}", headers=ADMIN).json()["file"] == "deleted"
    kept = FeatureStore(store.folder)
    assert list(kept.index) == [str(file_key(files[1]))] and kept.get(str(file_key(files[1]))).tolist() == [3.0, 4.0]
    rows = np.concatenate([np.load(p) for p in store.folder.glob("chunk-*.npy")])
    assert rows.tolist() == [[3.0, 4.0]], "the deleted image's row is not on disk any more"


def test_confirming_a_label_is_the_admin_s_and_names_the_label_seen(admin: tuple[httpx.Client, AdminServer]) -> None:
    c, _ = admin
    (mine,) = pictures("train", 1, start=300)
    sid = post(c, mine, "ants", headers=SAMPLER).json()["id"]
    r = c.post(f"/v1/samples/{sid}/confirm", json={"label": "ants"}, headers=SAMPLER)
    assert r.status_code == 403 and "needs the admin token" in error_of(r)["message"], r.text
    r = c.post(f"/v1/samples/{sid}/confirm", json={"label": "bees"}, headers=ADMIN)
    assert r.status_code == 409 and "labelled 'ants' now, not 'bees'" in error_of(r)["message"], r.text
    for body in ({"label": "ants", "why": "x"}, {}):
        assert c.post(f"/v1/samples/{sid}/confirm", json=body, headers=ADMIN).status_code == 422
    assert c.post(f"/v1/samples/{'0' * 64}/confirm", json={"label": "ants"}, headers=ADMIN).status_code == 404
    assert audit(c, action="sample.confirm") == [], "nothing refused left a trace"
    r = c.post(f"/v1/samples/{sid}/confirm", json={"label": "ants"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["sample"]["label"] == "ants", r.text
    (entry,) = audit(c, action="sample.confirm")
    assert (entry["id"], entry["actor"], entry["target"]) == (r.json()["audit_id"], "admin", sid)
    assert entry["detail"] == {"label": "ants", "split": "train"}
    assert c.get(f"/v1/samples/{sid}", headers=ADMIN).json()["label"] == "ants", "confirming changes no data"
