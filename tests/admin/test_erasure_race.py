"""An upload racing an erasure of the same picture never leaves it stored: the erased-picture check and the sample's
insert are one transaction with respect to the erasure's write and its sweep of stored samples. Real admin over HTTP,
real SQLite file; the interleaving is forced by pausing the upload between its early check and its insert."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from admin.domain.service import AdminService
from admin.server import AdminServer
from tests.admin.test_api import settings
from tests.admin.test_erased_uploads import EXTRA, stored_files, total, upload
from tests.admin.test_review import Served
from tests.support.auth import ADMIN
from tests.support.fakes import FakeRollout
from tests.support.images import photo
from tests.support.waiting import wait_ready


def _pause_first_insert(service: AdminService) -> tuple[threading.Event, threading.Event]:
    """The next upload stops after its early checks (the erased-picture one included), before the store's
    insert: (reached, go on)."""
    store = service.intake.store
    original: Callable[..., Any] = store.add_many
    reached, go_on = threading.Event(), threading.Event()

    def paused(*args: Any, **kwargs: Any) -> Any:
        if not reached.is_set():
            reached.set()
            assert go_on.wait(30), "the test never let the upload go on"
        return original(*args, **kwargs)

    store.add_many = paused  # type: ignore[method-assign]
    return reached, go_on


def test_an_upload_checked_before_an_erasure_and_stored_after_it_is_refused(tmp_path: Path, free_port: int) -> None:
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    data, near, other = photo(70), photo(70, fmt="JPEG", quality=85), photo(71)
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        served = Served(c, st.capture_path, server)
        cid = served.capture(data, 0.6)
        assert c.get(f"/v1/review/{cid}", headers=ADMIN).status_code == 200, "indexed"
        reached, go_on = _pause_first_insert(server.app.state.service)
        answers: list[httpx.Response] = []
        with httpx.Client(base_url=server.url, timeout=60) as racer:
            uploading = threading.Thread(target=lambda: answers.append(upload(racer, near)))
            uploading.start()
            assert reached.wait(30), "the upload reached its insert"
            erased = c.delete(f"/v1/review/{cid}", headers=ADMIN)  # while the upload waits, its check passed
            assert erased.status_code == 200, erased.text
            go_on.set()
            uploading.join(60)
        (r,) = answers
        assert r.status_code == 409 and r.json()["error"]["type"] == "ErasedPictureError", r.text
        assert cid in r.json()["error"]["message"]
        assert total(c) == 0, "the upload that raced the erasure stored nothing"
        assert near not in stored_files(st.state_dir), "and left no file of the picture behind"
        assert upload(c, other).status_code == 201, "another picture is stored as ever"


def test_uploads_hammering_an_erasure_never_outlive_it(tmp_path: Path, free_port: int) -> None:
    """Threads upload copies of a picture (exact and re-encoded) over HTTP while it is erased: whatever the
    interleaving, once the erasure answered and the uploads finished, no sample of the picture is stored; each
    upload was either stored before the erasure (and then deleted by it) or refused."""
    st = settings(tmp_path, admin_port=free_port, capture_scan_s=0.2)
    data = photo(72)
    copies = [data, *(photo(72, fmt="JPEG", quality=q) for q in (70, 80, 90))]
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=EXTRA) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        cid = Served(c, st.capture_path, server).capture(data, 0.6)
        assert c.get(f"/v1/review/{cid}", headers=ADMIN).status_code == 200, "indexed"
        start, statuses = threading.Barrier(5), list[int]()

        def keep_uploading(body: bytes) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as mine:
                start.wait()
                for _ in range(6):
                    statuses.append(upload(mine, body).status_code)

        threads = [threading.Thread(target=keep_uploading, args=(b,)) for b in copies]
        for t in threads:
            t.start()
        start.wait()
        erased = c.delete(f"/v1/review/{cid}", headers=ADMIN)
        for t in threads:
            t.join(120)
        assert erased.status_code == 200, erased.text
        assert set(statuses) <= {200, 201, 409}, statuses
        assert total(c) == 0, f"a copy outlived the erasure: {c.get('/v1/samples', headers=ADMIN).text}"
        assert not any(b in stored_files(st.state_dir) for b in copies), "no file of the picture left"
