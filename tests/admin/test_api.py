"""The admin HTTP API through httpx: auth, uploads and every bad input, errors, probes, metrics, docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.app import create_app
from admin.server import AdminServer
from admin.settings import AdminSettings
from graft.core.errors import ConfigError
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export, write_toy_card
from tests.support.images import jpeg, noise_png
from tests.support.waiting import error_of, wait_ready


def settings(tmp_path: Path, **overrides: Any) -> AdminSettings:
    """A service whose model in service is a toy run (a valid card, labels ants and bees)."""
    initial = write_toy_card(tmp_path / "initial", ["ants", "bees"], 0.6).labels and tmp_path / "initial"
    values: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN,
        "samples_token": SAMPLES_TOKEN,
        "state_dir": tmp_path / "state",
        "model_store": tmp_path / "store",
        "model_name": "graft",
        "initial_run": initial,
        "rollout": "none",
    }
    values.update(overrides)
    return AdminSettings(**values)


@pytest.fixture
def client(tmp_path: Path, free_port: int) -> Iterator[httpx.Client]:
    """A real uvicorn server on a free port, and an httpx client for it."""
    st = settings(tmp_path, admin_port=free_port, max_upload_bytes=4000, max_batch_files=4)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        yield c


def post_sample(
    c: httpx.Client, data: bytes, label: str | None = "ants", headers: dict[str, str] = ADMIN
) -> httpx.Response:
    form = {"label": label} if label is not None else {}
    return c.post("/v1/samples", files={"file": ("x.jpg", data, "image/jpeg")}, data=form, headers=headers)


# --------------------------------------------------------------------------- auth


def test_refuses_to_build_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFT_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError):
        create_app(settings(tmp_path, admin_token=None))


def test_every_admin_endpoint_needs_the_admin_token(client: httpx.Client) -> None:
    routes = [
        ("GET", "/v1/samples/stats"),
        ("POST", "/v1/retrain"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/abc"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/1/promote"),
        ("POST", "/v1/rollback"),
    ]
    for i, (method, path) in enumerate(routes):
        assert error_of(client.request(method, path))["type"] == "AuthenticationError"
        # Each wrong token from its own loopback address: wrong tokens from one address back off (429) after a few.
        elsewhere = httpx.HTTPTransport(local_address=f"127.0.2.{i + 1}")
        with httpx.Client(base_url=client.base_url, transport=elsewhere) as c:
            r = c.request(method, path, headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.request(method, path, headers={"Authorization": ADMIN_TOKEN}).status_code == 401  # no scheme
        r = client.request(method, path, headers=SAMPLER)
        assert r.status_code == 403, (path, r.text)
        assert error_of(r)["type"] == "PermissionDeniedError"
    assert client.get("/v1/samples/stats", headers=ADMIN).status_code == 200


def test_samples_token_may_post_samples(client: httpx.Client) -> None:
    r = post_sample(client, jpeg(1), headers=SAMPLER)
    assert r.status_code == 201, r.text
    assert post_sample(client, jpeg(2), headers={}).status_code == 401
    assert post_sample(client, jpeg(3), headers={"Authorization": "Bearer nope-nope-nope-nope"}).status_code == 401


def test_probes_and_metrics_need_no_token_the_docs_do(client: httpx.Client, tmp_path: Path, free_port: int) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    checks = {"database": True, "champion": True, "reconciled": True}
    assert ready.status_code == 200 and ready.json()["checks"] == checks
    assert ready.json()["model_name"] == "graft" and ready.json()["default_version"] == "1"
    assert client.get("/metrics").status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 401, "the API's shape is not public"
        assert client.get(path, headers=SAMPLER).status_code == 403
        assert client.get(path, headers=ADMIN).status_code == 404, "and off unless GRAFT_API_DOCS is on"
    st = settings(tmp_path / "docs", admin_port=0, api_docs=True)
    with AdminServer(st, rollout=FakeRollout()) as server, httpx.Client(base_url=server.url) as docs:
        assert docs.get("/openapi.json").status_code == 401 and docs.get("/docs", headers=ADMIN).status_code == 200
        spec = docs.get("/openapi.json", headers=ADMIN).json()
    for path in ("/v1/samples", "/v1/samples/batch", "/v1/retrain", "/v1/jobs/{job_id}", "/v1/models", "/v1/rollback",
                 "/v1/labels"):  # fmt: skip
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/v1/samples"]["post"]["requestBody"]["content"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


# --------------------------------------------------------------------------- samples


def test_post_sample_stores_and_recognises_duplicates(client: httpx.Client) -> None:
    data = jpeg(10)
    r = post_sample(client, data, "ants")
    assert r.status_code == 201
    body = r.json()
    assert body["label"] == "ants" and body["split"] in ("train", "holdout") and body["duplicate"] is False
    import hashlib

    assert body["id"] == hashlib.sha256(data).hexdigest()
    again = post_sample(client, data, "ants")
    assert again.status_code == 201 and again.json() == {**body, "duplicate": True}
    clash = post_sample(client, data, "bees")
    assert clash.status_code == 409 and "already stored" in error_of(clash)["message"]
    stats = client.get("/v1/samples/stats", headers=ADMIN).json()
    assert stats["total"] == 1 and stats["since_champion"] == 1 and stats["champion_version"] == "1"
    meta = client.get(f"/v1/samples/{body['id']}", headers=ADMIN).json()
    assert meta["format"] == "JPEG" and (meta["width"], meta["height"]) == (24, 16) and meta["size"] == len(data)
    assert client.get("/v1/samples/" + "0" * 64, headers=ADMIN).status_code == 404
    assert stats["labels"]["ants"][body["split"]] == 1


@pytest.mark.parametrize(
    ("data", "label", "status", "kind"),
    [
        (b"this is plain text, not a picture", "ants", 415, "NotAnImageError"),
        (b"", "ants", 400, "EmptyBodyError"),
        (jpeg(5)[:300], "ants", 400, "TruncatedImageError"),
        (None, None, 400, "InvalidSampleError"),  # missing label
        (None, "", 400, "InvalidSampleError"),
        (None, "   ", 400, "InvalidSampleError"),
        (None, "../../etc/passwd", 400, "InvalidSampleError"),
        (None, "ants\\bees", 400, "InvalidSampleError"),
        (None, "ants\x07", 400, "InvalidSampleError"),
        (None, "ants\r\nX-Injected: 1", 400, "InvalidSampleError"),
    ],
)
def test_bad_samples_get_clear_4xx(
    client: httpx.Client, data: bytes | None, label: str | None, status: int, kind: str
) -> None:
    r = post_sample(client, jpeg(77) if data is None else data, label)
    assert r.status_code == status, r.text
    assert error_of(r)["type"] == kind
    assert client.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 0, "nothing stored"
    assert client.get("/healthz").status_code == 200


def test_malformed_uploads(client: httpx.Client) -> None:
    r = client.post("/v1/samples", data={"label": "ants"}, headers=ADMIN)
    assert r.status_code in (400, 415) and "file" in error_of(r)["message"]
    r = client.post("/v1/samples", content=jpeg(3), headers={**ADMIN, "Content-Type": "image/jpeg"})
    assert r.status_code == 415 and "multipart/form-data" in error_of(r)["message"]
    extra = {"other": ("o.txt", b"x", "text/plain")}  # forces multipart; 'file' itself is a plain field
    r = client.post("/v1/samples", data={"file": "just a string", "label": "ants"}, files=extra, headers=ADMIN)
    assert r.status_code == 400 and "file part" in error_of(r)["message"]
    two = [("file", ("a.jpg", jpeg(1), "image/jpeg")), ("file", ("b.jpg", jpeg(2), "image/jpeg"))]
    r = client.post("/v1/samples", files=two, data={"label": "ants"}, headers=ADMIN)
    assert r.status_code == 400, r.text
    error_of(r)


def test_oversized_upload_is_413(client: httpx.Client) -> None:
    big = noise_png(60, 60)
    assert len(big) > 4000
    r = post_sample(client, big)
    assert r.status_code == 413 and error_of(r)["type"] == "PayloadTooLargeError"
    assert (
        client.get("/metrics").text.count('graft_admin_samples_rejected_total{reason="PayloadTooLargeError"} 1.0') == 1
    )


def test_batch_form_is_all_or_nothing(client: httpx.Client) -> None:
    files = [("file", (f"{i}.jpg", jpeg(100 + i), "image/jpeg")) for i in range(3)]
    r = client.post("/v1/samples/batch", files=files, data={"label": "bees"}, headers=SAMPLER)
    assert r.status_code == 201 and r.json()["created"] == 3 and r.json()["duplicates"] == 0
    per_file = [*files[:2], ("file", ("new.jpg", jpeg(200), "image/jpeg"))]
    labels = {"label": ["bees", "bees", "wasps"]}
    r = client.post("/v1/samples/batch", files=per_file, data=labels, headers=ADMIN)
    assert r.status_code == 201 and r.json()["created"] == 1 and r.json()["duplicates"] == 2
    bad = [("file", ("ok.jpg", jpeg(300), "image/jpeg")), ("file", ("bad.txt", b"nope" * 50, "text/plain"))]
    r = client.post("/v1/samples/batch", files=bad, data={"label": "bees"}, headers=ADMIN)
    assert r.status_code == 415 and "item 1 ('bad.txt')" in error_of(r)["message"]
    r = client.post("/v1/samples/batch", files=bad, data={"label": ["a", "b", "c"]}, headers=ADMIN)
    assert r.status_code == 400 and "labels" in error_of(r)["message"]
    assert client.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 4, "failed batches stored nothing"
    five = [("file", (f"{i}.jpg", jpeg(400 + i), "image/jpeg")) for i in range(5)]
    assert client.post("/v1/samples/batch", files=five, data={"label": "bees"}, headers=ADMIN).status_code == 400


def test_metrics_count_samples(client: httpx.Client) -> None:
    post_sample(client, jpeg(42), "ants")
    post_sample(client, jpeg(42), "ants")
    text = client.get("/metrics").text
    assert 'graft_admin_samples_received_total{duplicate="false",label="ants"' in text
    assert 'graft_admin_samples_received_total{duplicate="true",label="ants"' in text
    assert "graft_admin_job_duration_seconds_bucket" not in text or "outcome" in text
    assert "graft_admin_serving_holdout_accuracy" in text


# --------------------------------------------------------------------------- other errors


def test_unknown_ids_and_bad_bodies(client: httpx.Client) -> None:
    assert error_of(client.get("/v1/jobs/nope", headers=ADMIN))["type"] == "NotFoundError"
    assert client.get("/v1/models/42", headers=ADMIN).status_code == 404
    assert client.post("/v1/models/42/promote", headers=ADMIN).status_code == 404
    r = client.post("/v1/rollback", headers=ADMIN)
    assert r.status_code == 409 and "nothing to roll back" in error_of(r)["message"]
    r = client.post("/v1/retrain", json={"epochs": 0}, headers=ADMIN)
    assert r.status_code == 422 and "epochs" in error_of(r)["message"]
    r = client.post("/v1/retrain", json={"overrides": {"output": "/etc"}}, headers=ADMIN)
    assert r.status_code == 422 and "set by the job" in error_of(r)["message"]
    r = client.post("/v1/retrain", json={"bogus": 1}, headers=ADMIN)
    assert r.status_code == 422
    # Settings travel as a typed config file, never as command-line flags: a value cannot become another flag.
    r = client.post("/v1/retrain", json={"overrides": {"lr": "--output=/etc"}}, headers=ADMIN)
    assert r.status_code == 422 and "lr" in error_of(r)["message"]
    assert client.post("/v1/retrain", json={"weights": "-x"}, headers=ADMIN).status_code == 422
    for bad, field in ((("outp", "/etc"), "outp"), (("momentum", 1.5), "momentum"), (("amp", "yes?"), "amp")):
        r = client.post("/v1/retrain", json={"overrides": dict([bad])}, headers=ADMIN)
        assert r.status_code == 422 and field in error_of(r)["message"], r.text
    r = client.post("/v1/retrain", json={"overrides": {"freeze_until": "layer3", "trainable_stages": 1}}, headers=ADMIN)
    assert r.status_code == 422 and "freeze_until" in error_of(r)["message"]
    assert client.get("/v1/jobs", headers=ADMIN).json()["jobs"] == [], "no job was created for a bad request"
    assert error_of(client.get("/v1/nothing-here", headers=ADMIN))["status"] == 404


# --------------------------------------------------------------------------- a real server


def test_real_server_refuses_a_streamed_oversized_upload(tmp_path: Path, free_port: int) -> None:
    """Chunked body without Content-Length: the limit must bite while the bytes arrive."""
    st = settings(tmp_path, admin_port=free_port, max_upload_bytes=4000)
    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="label"\r\n\r\nants\r\n'
        yield (
            boundary
            + b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        )
        for _ in range(2000):  # 2 MB in 1 KB chunks, far over the limit
            sent["bytes"] += 1024
            yield b"\xff" * 1024
        yield b"\r\n--xyz--\r\n"

    with AdminServer(st, rollout=FakeRollout()) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        headers = {**ADMIN, "Content-Type": "multipart/form-data; boundary=xyz"}
        r = c.post("/v1/samples", content=body(), headers=headers)
        assert "content-length" not in r.request.headers and sent["bytes"] > 4000
        # The streaming counter refused it (its own message), not a Content-Length check or the file check.
        assert r.status_code == 413 and "refused while uploading" in error_of(r)["message"]
        assert c.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 0
        assert c.get("/healthz").status_code == 200
        ok = c.post(
            "/v1/samples", files={"file": ("a.jpg", jpeg(1), "image/jpeg")}, data={"label": "ants"}, headers=ADMIN
        )
        assert ok.status_code == 201


def test_a_batch_with_a_conflict_stores_nothing(client: httpx.Client) -> None:
    assert post_sample(client, jpeg(600), "ants").status_code == 201
    batch = [("file", ("new.jpg", jpeg(601), "image/jpeg")), ("file", ("clash.jpg", jpeg(600), "image/jpeg"))]
    r = client.post("/v1/samples/batch", files=batch, data={"label": "bees"}, headers=ADMIN)
    assert r.status_code == 409 and "nothing from this batch was stored" in error_of(r)["message"]
    twice = [("file", ("a.jpg", jpeg(602), "image/jpeg")), ("file", ("b.jpg", jpeg(602), "image/jpeg"))]
    r = client.post("/v1/samples/batch", files=twice, data={"label": ["ants", "bees"]}, headers=ADMIN)
    assert r.status_code == 409 and "twice in this request" in error_of(r)["message"]
    assert client.get("/v1/samples/stats", headers=ADMIN).json()["total"] == 1
