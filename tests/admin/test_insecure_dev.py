"""Insecure development mode (no authentication, loopback only) against web pages: a real server on 127.0.0.1
receives what a hostile page in the developer's browser would send (cross-site forms, fetch, DNS rebinding)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.api.origin import check_local_request
from admin.server import AdminServer
from graft.core.errors import DisallowedHostError, PermissionDeniedError
from tests.admin.test_api import settings
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import jpeg
from tests.support.waiting import error_of, wait_ready

EVIL = "https://evil.example"


@pytest.fixture
def dev(tmp_path: Path, free_port: int) -> Iterator[httpx.Client]:
    st = settings(tmp_path, admin_port=free_port, insecure_dev=True, admin_token=None, samples_token=None)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        yield c


def state(c: httpx.Client) -> tuple[int, list[str], int]:
    labels = [x["name"] for x in c.get("/v1/labels").json()["labels"]]
    return c.get("/v1/samples/stats").json()["total"], labels, len(c.get("/v1/jobs").json()["jobs"])


def test_pages_from_elsewhere_cannot_drive_or_read_it(dev: httpx.Client) -> None:
    before = state(dev)
    files = {"file": ("x.jpg", jpeg(1), "image/jpeg")}
    # What the review saw succeed: a cross-site multipart form under a new label, a text/plain retrain.
    r = dev.post("/v1/samples", files=files, data={"label": "wasps"}, headers={"Origin": EVIL})
    assert r.status_code == 403 and "Origin" in error_of(r)["message"]
    r = dev.post("/v1/retrain", content=b"{}", headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert r.status_code == 403
    r = dev.post("/v1/retrain", content=b"{}", headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"})
    assert r.status_code == 403, "a browser's own word that the request is cross-site, even without an Origin"
    r = dev.post("/v1/labels", json={"name": "wasps"}, headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 403, "another port of localhost is another origin"
    assert dev.post("/v1/labels", json={"name": "x"}, headers={"Origin": "null"}).status_code == 403
    # DNS rebinding: the page's own name, pointed at 127.0.0.1; what it reads is refused.
    port = dev.base_url.port
    r = dev.get("/v1/models", headers={"Host": f"rebind.evil.example:{port}"})
    assert r.status_code == 400 and error_of(r)["type"] == "DisallowedHostError"
    assert dev.get("/healthz", headers={"Host": "rebind.evil.example"}).status_code == 400
    r = dev.get("/v1/models", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"})
    assert r.status_code == 403
    assert state(dev) == before, "nothing stored, no label, no job"


def test_its_own_pages_and_programs_still_work(dev: httpx.Client) -> None:
    port = dev.base_url.port
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    assert dev.post("/v1/labels", json={"name": "wasps"}, headers=own).status_code == 201
    assert dev.post("/v1/labels", json={"name": "hornets"}).status_code == 201, "curl sends no Origin"
    r = dev.get("/console/login", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert r.status_code == 200, "following a link to a page is no attack"
    assert dev.get("/v1/models", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert dev.get("/v1/models", headers={"Host": f"[::1]:{port}"}).status_code == 200
    r = dev.post("/console/login", data={"token": "anything"}, headers={"Origin": f"http://localhost:{port}",
                                                                        "Host": f"localhost:{port}"})  # fmt: skip
    assert r.status_code == 303


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("GET", {"host": "127.0.0.1:8090"}, None),
        ("GET", {"host": "127.8.9.10"}, None),
        ("GET", {"host": "LOCALHOST:8090"}, None),
        ("GET", {}, None),  # HTTP/1.0 without a Host: no browser sends that
        ("GET", {"host": "10.0.0.5:8090"}, DisallowedHostError),
        ("GET", {"host": "127.0.0.1.nip.io"}, DisallowedHostError),
        ("GET", {"host": "localhost.evil.example"}, DisallowedHostError),
        ("POST", {"host": "127.0.0.1:8090", "origin": "http://127.0.0.1:8090"}, None),
        ("POST", {"host": "127.0.0.1", "origin": "http://127.0.0.1:80"}, None),
        ("POST", {"host": "127.0.0.1:8090", "origin": "http://localhost:8090"}, PermissionDeniedError),
        ("POST", {"host": "127.0.0.1:8090", "origin": "http://127.0.0.1:notaport"}, PermissionDeniedError),
        ("POST", {"host": "127.0.0.1:8090", "sec-fetch-site": "same-site"}, PermissionDeniedError),
        ("POST", {"host": "127.0.0.1:8090", "sec-fetch-site": "none"}, None),
        ("DELETE", {"host": "127.0.0.1:8090", "origin": EVIL}, PermissionDeniedError),
        ("GET", {"host": "127.0.0.1:8090", "origin": EVIL}, None),  # reading is the Host check's and CORS's job
    ],
)
def test_the_rules(method: str, headers: dict[str, str], refused: type[Exception] | None) -> None:
    if refused is None:
        check_local_request(method, headers)
    else:
        with pytest.raises(refused):
            check_local_request(method, headers)
