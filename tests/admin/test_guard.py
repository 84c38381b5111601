"""The admin's front door against hostile requests, over real HTTP to a real uvicorn server on 127.0.0.1:
authentication before any body byte is read, body caps, slow bodies, the label set, odd image formats."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from admin.server import AdminServer
from admin.settings import AdminSettings
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export, write_toy_card
from tests.support.images import jpeg
from tests.support.waiting import error_of, wait_ready


@pytest.fixture
def admin(tmp_path: Path, free_port: int) -> Iterator[tuple[str, int]]:
    write_toy_card(tmp_path / "initial", ["ants", "bees"], 0.6)
    st = AdminSettings(
        admin_token=ADMIN_TOKEN, samples_token=SAMPLES_TOKEN, admin_port=free_port, state_dir=tmp_path / "state",
        model_store=tmp_path / "store", model_name="graft", initial_run=tmp_path / "initial", rollout="none",
        body_timeout_s=2.0, max_upload_bytes=100_000,
    )  # fmt: skip
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        yield server.url, free_port


def raw(port: int, request: bytes, then: bytes = b"", pause: float = 0.0, timeout: float = 10) -> tuple[int, float]:
    """Send a raw HTTP request (headers, then a body slowly); the status line's code and when it came."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        for byte in then:
            s.settimeout(pause)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break  # the server answered before the body was done
            except (TimeoutError, BlockingIOError):
                pass
            s.sendall(bytes([byte]))
        s.settimeout(timeout)
        head = s.recv(1024).split(b"\r\n", 1)[0]
    return int(head.split()[1]), time.monotonic() - t0


def test_no_body_is_read_before_the_token_is_checked(admin: tuple[str, int]) -> None:
    url, port = admin
    rss = psutil.Process().memory_info().rss
    # A 300 MB body announced, none of it sent: the 401 comes from the headers alone.
    status, took = raw(port, b"POST /v1/retrain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 300000000\r\n\r\n")  # fmt: skip
    assert status == 401 and took < 5
    assert psutil.Process().memory_info().rss - rss < 50 * 2**20
    with httpx.Client(base_url=url) as c:
        r = c.post("/v1/retrain", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 401, "authentication before parsing: malformed JSON without a token is a 401"
        r = c.post("/v1/retrain", json={"epochs": 1}, headers=SAMPLER)
        assert r.status_code == 403 and error_of(r)["type"] == "PermissionDeniedError"
        r = c.post("/v1/retrain", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 422, "with the token, the body is read and judged"


def test_bodies_are_capped_per_route(admin: tuple[str, int]) -> None:
    url, port = admin
    auth = b"Authorization: Bearer " + ADMIN_TOKEN.encode()
    status, took = raw(port, b"POST /v1/retrain HTTP/1.1\r\nHost: x\r\n" + auth
                             + b"\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n")  # fmt: skip
    assert status == 413 and took < 5, "a JSON route takes 64 KiB at most, refused before reading"
    with httpx.Client(base_url=url) as c:
        r = c.post("/v1/retrain", json={"overrides": {"lr": 0.1}, "pad": "x" * 70_000}, headers=ADMIN)
        assert r.status_code == 413 and error_of(r)["type"] == "PayloadTooLargeError"

        def chunks() -> Iterator[bytes]:
            yield b'{"epochs": 1, "pad": "'
            for _ in range(100):
                yield b"x" * 1024
            yield b'"}'

        r = c.post("/v1/retrain", content=chunks(), headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 413 and "refused while uploading" in error_of(r)["message"]
        assert c.get("/v1/jobs", headers=ADMIN).json()["jobs"] == []


def test_a_body_trickled_in_gets_a_deadline(admin: tuple[str, int]) -> None:
    _, port = admin
    body = b'{"epochs": 1}' + b" " * 200
    length = str(len(body)).encode()
    head = (b"POST /v1/retrain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n")  # fmt: skip
    status, took = raw(port, head, body, pause=0.05)
    assert status == 408 and took < 8, (status, took)  # body_timeout_s=2


def test_the_samples_token_may_use_known_labels_only(admin: tuple[str, int]) -> None:
    url, _ = admin
    with httpx.Client(base_url=url) as c:

        def post(label: str, headers: dict[str, str], seed: int) -> httpx.Response:
            files = {"file": ("x.jpg", jpeg(seed), "image/jpeg")}
            return c.post("/v1/samples", files=files, data={"label": label}, headers=headers)

        r = post("'; DROP TABLE samples;--", SAMPLER, 1)
        assert r.status_code == 403 and "known: ants, bees" in error_of(r)["message"]
        assert post("ants\u2028", SAMPLER, 2).status_code == 400
        assert post("Ants", SAMPLER, 3).json()["label"] == "ants", "one label whatever its case"
        assert post("ｂｅｅｓ", SAMPLER, 4).json()["label"] == "bees", "or its width"
        assert c.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 2
        assert c.post("/v1/labels", json={"name": "wasps"}, headers=SAMPLER).status_code == 403
        r = c.post("/v1/labels", json={"name": "wasps"}, headers=ADMIN)
        assert r.status_code == 201 and "wasps" in [x["name"] for x in r.json()["labels"]]
        assert post("wasps", SAMPLER, 5).status_code == 201
        assert c.delete("/v1/labels/ants", headers=ADMIN).status_code == 409, "the model in service knows it"
        metrics = c.get("/metrics").text
        assert "DROP TABLE" not in metrics and "\u2028" not in metrics, "label values are the admin's set only"


def mpo() -> bytes:
    frames = [Image.new("RGB", (32, 24), c) for c in ((200, 10, 10), (10, 200, 10))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize(("data", "status"), [(mpo(), 201), (tiff(), 415)])
def test_camera_multi_picture_jpegs_are_jpegs_other_formats_415(
    admin: tuple[str, int], data: bytes, status: int
) -> None:
    url, _ = admin
    with httpx.Client(base_url=url) as c:
        r = c.post("/v1/samples", files={"file": ("x", data, "image/jpeg")}, data={"label": "ants"}, headers=ADMIN)
        assert r.status_code == status, r.text
        if status == 201:
            assert c.get(f"/v1/samples/{r.json()['id']}", headers=ADMIN).json()["format"] == "MPO"
