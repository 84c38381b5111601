"""The review queue through the real admin over HTTP, on captures written by the handler's own writer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.server import AdminServer
from graft.core.capture import read_captures
from handlers.capture import CaptureWriter
from tests.admin.test_api import settings
from tests.support.auth import ADMIN, SAMPLER
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import photo
from tests.support.waiting import error_of, wait_for, wait_ready


class Served:
    """The admin, and a capture writer standing for the inference workers of model 'graft' version 1."""

    def __init__(self, client: httpx.Client, capture_dir: Path, server: AdminServer | None = None):
        self.c = client
        self.server = server
        self.dir = capture_dir
        self.stored = 0
        self.writer = CaptureWriter(capture_dir, "graft", "1", ["ants", "bees"], 1.0, 10**9, self._count)

    def _count(self, outcome: str, n: int) -> None:
        self.stored += n if outcome == "stored" else 0

    def capture(self, data: bytes, ants: float) -> str:
        """Serve one input: the model answered P(ants) = ``ants``; the capture's id."""
        before = self.stored
        self.writer.offer(data, [ants, 1 - ants], f"req-{time.monotonic_ns()}")
        wait_for(lambda: self.stored > before, 10, what="the capture to be written")
        cid = read_captures(self.dir, "graft")[-1].record.id
        # Written is not yet indexed: the background pass may lag on a busy machine, and a page read gives up
        # waiting for its lock after 2 s. Asking for the capture by id waits for the index (this one and every
        # one written before it), so what a test reads next sees them. 410: erased on sight.
        r = self.c.get(f"/v1/review/{cid}", headers=SAMPLER, timeout=60)
        assert r.status_code in (200, 410), r.text
        return cid

    def queue(self, **params: Any) -> list[dict[str, Any]]:
        r = self.c.get("/v1/review", params=params, headers=SAMPLER)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


@pytest.fixture
def served(tmp_path: Path, free_port: int) -> Iterator[Served]:
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        yield Served(c, st.capture_path, server)


def test_the_queue_is_unlabelled_captures_most_uncertain_first(served: Served) -> None:
    ids = {p: served.capture(photo(seed), p) for seed, p in enumerate([0.9, 0.55, 0.7, 0.99, 0.51])}
    items = served.queue()
    assert [i["id"] for i in items] == [ids[0.51], ids[0.55], ids[0.7], ids[0.9], ids[0.99]]
    first = items[0]
    assert first["predicted"] == "ants" and first["margin"] == pytest.approx(0.02, abs=1e-6)
    assert first["scores"] == [{"label": "ants", "score": 0.51}, {"label": "bees", "score": 0.49}]
    assert first["model_version"] == "1" and first["captured_at"].endswith("Z") and first["status"] == "queued"
    assert first["image_url"] == f"/v1/review/{ids[0.51]}/image"
    by_entropy = [i["id"] for i in served.queue(strategy="entropy")]
    assert by_entropy[0] == ids[0.51] and by_entropy[-1] == ids[0.99]
    assert sorted(i["id"] for i in served.queue(strategy="random")) == sorted(ids.values())
    assert len(served.queue(limit=2)) == 2 and served.queue(limit=2, offset=4)[0]["id"] == ids[0.99]


def test_near_duplicates_of_captures_and_of_samples_collapse(served: Served) -> None:
    first = served.capture(photo(1), 0.6)
    again = served.capture(photo(1, fmt="JPEG", quality=80), 0.52)  # other bytes, the same picture
    r = served.c.post("/v1/samples", files={"file": ("s.png", photo(2), "image/png")}, data={"label": "bees"},
                      headers=ADMIN)  # fmt: skip
    assert r.status_code == 201
    of_sample = served.capture(photo(2, fmt="JPEG", quality=90), 0.5)
    other = served.capture(photo(3), 0.7)
    items = served.queue()
    assert [i["id"] for i in items] == [first, other], "each picture once, samples never again"
    assert items[0]["seen"] == 2
    dup = served.c.get(f"/v1/review/{again}", headers=SAMPLER).json()
    assert dup["status"] == "duplicate"
    assert served.c.get(f"/v1/review/{of_sample}", headers=SAMPLER).json()["status"] == "duplicate"
    r = served.c.post(f"/v1/review/{again}/label", json={"label": "ants"}, headers=SAMPLER)
    assert r.status_code == 409 and first in error_of(r)["message"]


def test_a_label_makes_a_sample_through_the_upload_rules(served: Served) -> None:
    cid = served.capture(photo(5), 0.55)
    r = served.c.post(f"/v1/review/{cid}/label", json={"label": "wasps"}, headers=SAMPLER)
    assert r.status_code == 403 and "POST /v1/labels" in error_of(r)["message"], "labellers use known labels only"
    assert served.queue()[0]["id"] == cid, "a refused label leaves the item queued"
    r = served.c.post(f"/v1/review/{cid}/label", json={"label": "BEES"}, headers=SAMPLER)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sample"]["label"] == "bees" and body["sample"]["split"] in ("train", "holdout")
    assert body["item"]["status"] == "labelled" and body["item"]["sample_id"] == body["sample"]["id"]
    meta = served.c.get(f"/v1/samples/{body['sample']['id']}", headers=ADMIN)
    assert meta.status_code == 200 and meta.json()["label"] == "bees"
    assert served.queue() == []
    assert served.queue(status="labelled")[0]["id"] == cid
    again = served.c.post(f"/v1/review/{cid}/label", json={"label": "ants"}, headers=SAMPLER)
    assert again.status_code == 409
    new = served.capture(photo(6), 0.5)
    r = served.c.post(f"/v1/review/{new}/label", json={"label": "wasps"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["sample"]["label"] == "wasps", "an admin may introduce a label"


def test_skip_hides_and_reject_counts_without_training(served: Served) -> None:
    a, b, c = (served.capture(photo(10 + i), 0.5 + i / 10) for i in range(3))
    assert served.c.post(f"/v1/review/{a}/label", json={"skip": True}, headers=SAMPLER).status_code == 200
    r = served.c.post(f"/v1/review/{b}/label", json={"reject": True}, headers=SAMPLER)
    assert r.status_code == 200 and r.json()["item"]["status"] == "rejected" and r.json()["sample"] is None
    assert [i["id"] for i in served.queue()] == [c]
    assert [i["id"] for i in served.queue(status="skipped")] == [a]
    stats = served.c.get("/v1/review/stats", headers=SAMPLER).json()
    assert (stats["captured"], stats["queued"], stats["skipped"], stats["rejected"], stats["labelled"]) == (3, 1, 1,
                                                                                                             1, 0)
    assert stats["by_predicted"]["ants"] == {"queued": 1, "skipped": 1, "rejected": 1}
    assert served.c.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 0, "nothing became a sample"
    for bad in ({}, {"label": "ants", "skip": True}, {"skip": False}, {"reject": True, "extra": 1}):
        r = served.c.post(f"/v1/review/{c}/label", json=bad, headers=SAMPLER)
        assert r.status_code == 422, (bad, r.text)


def test_erasing_a_picture_erases_every_copy_and_every_later_one(served: Served) -> None:
    data, reencoded = photo(30), photo(30, fmt="JPEG", quality=85)
    copies = [served.capture(data, 0.6) for _ in range(3)] + [served.capture(reencoded, 0.55)]
    other = served.capture(photo(31), 0.7)
    assert [i["id"] for i in served.queue()] == [copies[0], other], "one picture, one item"
    r = served.c.delete(f"/v1/review/{copies[1]}", headers=ADMIN)
    assert r.status_code == 200, "asked on any copy"
    assert sorted(r.json()["captures"]) == sorted(copies) and r.json()["samples"] == [], "what was removed"

    def kept() -> bytes:
        return b"".join(f.read_bytes() for f in served.dir.joinpath("graft").glob("*.seg"))

    assert data not in kept() and reencoded not in kept(), "no copy left in the segments, exact or near"
    for cid in copies:
        assert served.c.get(f"/v1/review/{cid}/image", headers=SAMPLER).status_code == 410, cid
    assert served.c.get(f"/v1/review/{other}/image", headers=SAMPLER).status_code == 200, "another picture stays"
    later = served.capture(data, 0.5)
    assert [i["id"] for i in served.queue()] == [other], "captured again: never queued again"
    assert served.c.get(f"/v1/review/{later}", headers=SAMPLER).status_code == 410
    assert data not in kept(), "its bytes erased as it was indexed"
    assert served.server is not None
    store = served.server.app.state.service.feedback.store
    assert [r.id for r in store.recent("graft", 100)] == [other], "replay never sends it again"
    (entry,) = served.c.get("/v1/audit", params={"action": "review.erase"}, headers=ADMIN).json()["entries"]
    assert sorted(entry["detail"]["captures"]) == sorted(copies) and entry["actor"] == "admin"


def test_erasing_a_picture_deletes_its_stored_samples_too(served: Served) -> None:
    """A label decision copied the capture into the samples, and someone uploaded a re-encoded copy: erasing the
    capture deletes both samples (rows and files), and says so; another picture's sample stays."""
    data = photo(40)
    cid = served.capture(data, 0.6)
    labelled = served.c.post(f"/v1/review/{cid}/label", json={"label": "ants"}, headers=SAMPLER).json()["sample"]
    near = served.c.post("/v1/samples", files={"file": ("n.jpg", photo(40, fmt="JPEG", quality=85), "image/jpeg")},
                         data={"label": "ants"}, headers=SAMPLER).json()  # fmt: skip
    other = served.c.post("/v1/samples", files={"file": ("o.png", photo(41), "image/png")}, data={"label": "bees"},
                          headers=SAMPLER).json()  # fmt: skip
    assert len({labelled["id"], near["id"], other["id"]}) == 3, "three stored samples"
    assert served.server is not None
    samples = served.server.app.state.service.samples
    files = [samples.path_of(labelled["id"]), samples.path_of(near["id"])]
    assert all(f is not None and f.is_file() for f in files)

    r = served.c.delete(f"/v1/review/{cid}", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["captures"] == [cid]
    assert sorted(s["id"] for s in body["samples"]) == sorted([labelled["id"], near["id"]])
    assert {s["label"] for s in body["samples"]} == {"ants"} and body["sample_files"] == "deleted"
    for sid in (labelled["id"], near["id"]):
        assert served.c.get(f"/v1/samples/{sid}", headers=ADMIN).status_code == 404, sid
    assert not any(f is not None and f.exists() for f in files), "their files are gone from the disk"
    assert served.c.get(f"/v1/samples/{other['id']}", headers=ADMIN).status_code == 200, "another picture stays"
    assert served.c.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 1
    assert served.c.get(f"/v1/review/{cid}/image", headers=SAMPLER).status_code == 410
    deleted = served.c.get("/v1/audit", params={"action": "sample.delete"}, headers=ADMIN).json()["entries"]
    assert sorted(e["target"] for e in deleted) == sorted([labelled["id"], near["id"]])
    assert all(e["detail"]["via"] == f"review.erase of capture {cid}" for e in deleted)
    (erase,) = served.c.get("/v1/audit", params={"action": "review.erase"}, headers=ADMIN).json()["entries"]
    assert sorted(erase["detail"]["samples"]) == sorted([labelled["id"], near["id"]])
    assert served.queue() == [], "nothing of it went back to the queue"


def test_images_deletion_and_pruning(served: Served) -> None:
    data = photo(20)
    cid = served.capture(data, 0.6)
    r = served.c.get(f"/v1/review/{cid}/image", headers=SAMPLER)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
    for bad in ("nope", "../../etc/passwd", "00000000000000000000-00000000"):
        assert served.c.get(f"/v1/review/{bad}/image", headers=SAMPLER).status_code == 404
    assert served.c.get(f"/v1/review/{cid}/image").status_code == 401
    assert served.c.delete(f"/v1/review/{cid}", headers=SAMPLER).status_code == 403, "deleting is the admin's"
    assert served.c.delete(f"/v1/review/{cid}", headers=ADMIN).status_code == 200
    assert served.c.get(f"/v1/review/{cid}/image", headers=SAMPLER).status_code == 410
    assert served.c.post(f"/v1/review/{cid}/label", json={"label": "ants"}, headers=SAMPLER).status_code == 410
    segments = list(served.dir.joinpath("graft").glob("*.seg"))
    assert segments and all(data not in f.read_bytes() for f in segments), "the image's bytes were erased"
    pruned = served.capture(photo(21), 0.6)
    assert served.queue()[0]["id"] == pruned
    for f in served.dir.joinpath("graft").glob("*.seg"):
        f.unlink()  # what the workers' disk budget does to the oldest segments
    assert served.queue() == []
    # The page read deletes the row whose image went ("deleted" counts the admin's erasure above); the
    # background pass's sweep may get there first and mark it "gone": both are the product's answer.
    by_status = served.c.get("/v1/review/stats", headers=SAMPLER).json()["by_status"]
    assert by_status in ({"deleted": 1}, {"deleted": 1, "gone": 1}), by_status
    assert served.c.get(f"/v1/review/{pruned}/image", headers=SAMPLER).status_code == 404


def test_a_newer_version_s_answer_replaces_the_queued_one(served: Served) -> None:
    old = served.capture(photo(30), 0.9)
    assert served.queue()[0]["margin"] == pytest.approx(0.8)
    served.writer.model_version = "2"  # the same picture, answered by the model now in service
    new = served.capture(photo(30, fmt="JPEG", quality=90), 0.52)
    (item,) = served.queue()
    assert item["id"] == new and item["model_version"] == "2" and item["seen"] == 2
    assert item["margin"] == pytest.approx(0.04), "ranked by what the model in service says now"
    assert served.c.get(f"/v1/review/{old}", headers=SAMPLER).json()["status"] == "duplicate"
    third = served.capture(photo(30), 0.6)  # again from version 2: counted on the current entry
    (item,) = served.queue()
    assert item["id"] == new and item["seen"] == 3
    assert served.c.get(f"/v1/review/{third}", headers=SAMPLER).json()["status"] == "duplicate"


def test_a_segment_is_read_as_captures_arrive_and_a_dead_writers_tail_is_given_up(tmp_path: Path) -> None:
    """Workers append to segments while the admin reads them: a capture cut short at the end waits for the
    next pass; one left short past the grace period (its writer died) is given up, not re-read forever."""
    import os

    from admin.domain.captures import CaptureIndex
    from admin.store.captures import CaptureStore
    from admin.store.db import Database
    from admin.store.samples import SampleStore
    from graft.core.capture import CaptureRecord, encode

    def blob(i: int) -> bytes:
        image = photo(i)
        record = CaptureRecord(id=f"{time.time_ns():020d}-{i:08x}", model_name="graft", model_version="1",
                               captured_at=time.time(), request_id="", image_type="png", image_bytes=len(image),
                               labels=["ants", "bees"], scores=[0.6, 0.4], margin=0.2, entropy=0.67)  # fmt: skip
        return encode(record, image)

    db = Database(tmp_path / "admin.sqlite3")
    store = CaptureStore(db)
    index = CaptureIndex(store, SampleStore(db, tmp_path / "samples"), tmp_path / "captures", 10**7)
    folder = tmp_path / "captures" / "graft"
    folder.mkdir(parents=True)
    live, dead = folder / f"{time.time_ns():020d}-0000000a.seg", folder / f"{time.time_ns() - 10**9:020d}-0000000b.seg"
    first, second = blob(1), blob(2)
    live.write_bytes(first + second[:-10])  # the worker is writing its second capture
    dead.write_bytes(blob(3) + blob(4)[:-10])
    old = time.time() - 3600
    os.utime(dead, (old, old))
    assert index.sync("graft") == 2, "the whole ones: one in each segment"
    assert store.read_to("graft") == {live.name: len(first), dead.name: dead.stat().st_size}, "the dead tail given up"
    with live.open("ab") as f:
        f.write(second[-10:])
    assert index.sync("graft") == 1 and index.sync("graft") == 0
    rows = store.review("graft", "margin", 10)
    assert len(rows) == 3 and {r.image_file for r in rows} == {live.name, dead.name}
    second_row = next(r for r in rows if r.file_offset == len(first))
    assert second_row.file_length == len(second) and second_row.image_file == live.name
    live.write_bytes(b"garbage" * 10)  # damaged: skipped to its end, nothing invented
    store.set_read_to("graft", live.name, 0)
    assert index.sync("graft") == 0 and store.read_to("graft")[live.name] == 70
    live.unlink()
    dead.unlink()
    assert index.sweep("graft", keep=1000) == 3 and store.read_to("graft") == {}, "pruned segments: captures gone"
    assert store.rows() == 0, "rows nobody decided on go with their files: the budget bounds the index too"
    db.close()


def test_indexing_runs_at_a_lower_cpu_priority_than_the_api(served: Served) -> None:
    """The background indexer takes the cores the inference workers leave idle (GRAFT_CAPTURE_NICE, 10)."""
    import os
    import threading

    (indexer,) = [t for t in threading.enumerate() if t.name == "admin-captures"]
    assert indexer.native_id is not None
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # the rest of the process keeps its own
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, indexer.native_id) == min(19, base + 10), 5,  # type: ignore[arg-type]
             what="the indexer's niceness")  # fmt: skip
    if hasattr(os, "SCHED_IDLE"):
        assert os.sched_getscheduler(indexer.native_id) == os.SCHED_IDLE, "it runs only when a core is idle"
        assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE


# --------------------------------------------------------------------------- undo


def undo(served: Served, capture_id: str | None = None, headers: dict[str, str] = SAMPLER, **body: Any
         ) -> httpx.Response:  # fmt: skip
    path = f"/v1/review/{capture_id}/undo" if capture_id else "/v1/review/undo"
    return served.c.post(path, json=body or None, headers=headers)


def test_undo_takes_decisions_back(served: Served) -> None:
    from tests.admin.test_corrections import audit, pictures

    a, b, c = (served.capture(data, 0.6 + i / 10) for i, data in enumerate(pictures("train", 3)))
    labelled = served.c.post(f"/v1/review/{a}/label", json={"label": "bees"}, headers=SAMPLER).json()
    sample = labelled["sample"]["id"]
    assert served.c.post(f"/v1/review/{b}/label", json={"skip": True}, headers=SAMPLER).status_code == 200
    assert served.c.post(f"/v1/review/{c}/label", json={"reject": True}, headers=SAMPLER).status_code == 200
    assert served.queue() == []
    r = undo(served, a)
    assert r.status_code == 200, r.text
    (done,) = r.json()["undone"]
    assert (done["decision"], done["label"], done["sample_removed"]) == ("labelled", "bees", sample)
    assert done["item"]["status"] == "queued" and done["item"]["sample_id"] is None
    assert served.c.get(f"/v1/samples/{sample}", headers=ADMIN).status_code == 404, "the sample it made is gone"
    assert [i["id"] for i in served.queue()] == [a]
    r = undo(served, count=2)  # this token's two latest decisions, newest first
    assert [(u["item"]["id"], u["decision"]) for u in r.json()["undone"]] == [(c, "rejected"), (b, "skipped")]
    assert {i["id"] for i in served.queue()} == {a, b, c}
    r = undo(served)
    assert r.status_code == 409 and "no review decision" in error_of(r)["message"]
    assert undo(served, a).status_code == 409, "queued: nothing to undo"
    assert undo(served, "00000000000000000000-00000000").status_code == 404
    assert served.c.post(f"/v1/review/{a}/label", json={"label": "ants"}, headers=ADMIN).status_code == 200
    r = undo(served, a)
    assert r.status_code == 403 and "admin token" in error_of(r)["message"], "an admin's decision is the admin's"
    assert undo(served, a, headers=ADMIN).status_code == 200
    assert undo(served, headers=ADMIN).status_code == 409, "the admin's own latest decisions: none left"
    trail = [(e["actor"], e["action"]) for e in audit(served.c, action="review.*")]
    assert trail[:3] == [("admin", "review.undo"), ("admin", "review.label"), ("samples", "review.undo")]
    assert trail.count(("samples", "review.undo")) == 3
    deleted = audit(served.c, action="sample.delete")
    assert len(deleted) == 2 and deleted[-1]["detail"]["via"] == f"review.undo of capture {a}"


def test_undo_keeps_a_sample_it_did_not_make_and_the_holdout_is_the_admins(served: Served) -> None:
    from tests.admin.test_corrections import pictures

    (known,), (held,) = pictures("train", 1), pictures("holdout", 1)
    first = served.capture(known, 0.6)
    assert [i["id"] for i in served.queue()] == [first], "queued before the same picture is uploaded"
    r = served.c.post("/v1/samples", files={"file": ("k.png", known, "image/png")}, data={"label": "ants"},
                      headers=ADMIN)  # fmt: skip
    sample = r.json()["id"]
    assert served.c.post(f"/v1/review/{first}/label", json={"label": "ants"}, headers=SAMPLER).json()["sample"][
        "duplicate"] is True  # fmt: skip
    (done,) = undo(served, first).json()["undone"]
    assert done["sample_removed"] is None and done["sample_kept"] == sample, "stored before the decision: kept"
    assert served.c.get(f"/v1/samples/{sample}", headers=ADMIN).status_code == 200
    second = served.capture(held, 0.7)
    r = served.c.post(f"/v1/review/{second}/label", json={"label": "bees"}, headers=SAMPLER)
    assert r.json()["sample"]["split"] == "holdout"
    r = undo(served, second)
    assert r.status_code == 403 and "holdout" in error_of(r)["message"]
    assert served.c.get(f"/v1/review/{second}", headers=SAMPLER).json()["status"] == "labelled", "nothing changed"
    r = undo(served, count=2)
    assert r.status_code == 403, "all of them or none"
    assert served.c.get(f"/v1/review/{first}", headers=SAMPLER).json()["status"] == "queued"
    (done,) = undo(served, second, headers=ADMIN).json()["undone"]
    assert done["sample_removed"] is not None and {i["id"] for i in served.queue()} == {first, second}


def test_deleting_a_sample_puts_its_captures_back_in_the_queue(served: Served) -> None:
    x = served.capture(photo(70), 0.6)
    sample = served.c.post(f"/v1/review/{x}/label", json={"label": "bees"}, headers=ADMIN).json()["sample"]["id"]
    y = served.capture(photo(70, fmt="JPEG", quality=85), 0.55)  # the same picture again: a duplicate of the sample
    assert served.c.get(f"/v1/review/{y}", headers=SAMPLER).json()["status"] == "duplicate"
    r = served.c.delete(f"/v1/samples/{sample}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["requeued"] == [x]
    (item,) = served.queue()
    assert item["id"] == x and item["seen"] == 2, "its near-duplicate counts on it again"
    assert served.c.get(f"/v1/review/{y}", headers=SAMPLER).json()["status"] == "duplicate"
    assert served.c.post(f"/v1/review/{x}/label", json={"label": "ants"}, headers=ADMIN).status_code == 200
