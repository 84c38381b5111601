"""The real TorchServe 0.12 (Java frontend + Python workers) serving the tiny ants/bees model."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports, read_keys
from tests.support.artifacts import MODEL, images, reference_probs, shared_missing_reason
from tests.support.paths import REPO
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

if shutil.which("java") is None:
    pytest.skip("java not found: TorchServe's frontend needs a Java 17 runtime", allow_module_level=True)
if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)

VAL = images("val", per_class=4, offset=20)
OCTET = {"Content-Type": "application/octet-stream"}


def config(store: Path, workdir: Path, **kw) -> ServeConfig:
    inf, mgmt, met, g1, g2 = free_ports(5)
    return ServeConfig(
        model_store=store, workdir=workdir, inference_address=f"http://127.0.0.1:{inf}",
        management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
        grpc_inference_port=g1, grpc_management_port=g2, **kw,
    )


@pytest.fixture(scope="module")
def artifacts(serving_artifacts):
    return serving_artifacts


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    _, store = artifacts
    ts = TorchServe(config(store, tmp_path_factory.mktemp("ts")))
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        yield ts
    finally:
        ts.stop()


def predict(server: TorchServe, body: bytes | str, headers: dict | None = None, path: str = f"/predictions/{MODEL}"):
    return httpx.post(server.inference_url + path, content=body, headers={**server.headers(), **(headers or OCTET)},
                      timeout=60)


def test_predictions_match_in_process_model_on_both_versions(server, artifacts):
    run, _ = artifacts
    ref = reference_probs(run, [p for p, _ in VAL])
    for path, version in ((f"/predictions/{MODEL}", "2"), (f"/predictions/{MODEL}/1", "1")):
        for (img, _), probs in zip(VAL, ref, strict=True):
            r = predict(server, img.read_bytes(), {"Content-Type": "image/jpeg"}, path)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == version  # the newest version is the default
            assert body["predictions"][0]["label"] == ["ants", "bees"][int(probs.argmax())]
            assert body["predictions"][0]["score"] == pytest.approx(float(probs.max()), abs=0.02)


def test_json_and_kserve_v1_bodies(server):
    b64 = base64.b64encode(VAL[0][0].read_bytes()).decode()
    json_ct = {"Content-Type": "application/json"}
    single = predict(server, f'{{"data": "{b64}", "topk": 1}}', json_ct)
    assert single.status_code == 200 and len(single.json()["predictions"]) == 1
    v1 = predict(server, f'{{"instances": [{{"data": "{b64}"}}, {{"data": "{b64}"}}]}}', json_ct,
                 f"/v1/models/{MODEL}:predict")
    assert v1.status_code == 200, v1.text
    assert len(v1.json()["predictions"]) == 2
    assert v1.json()["predictions"][0] == predict(server, VAL[0][0].read_bytes()).json()["predictions"]


def test_concurrent_requests_are_batched(server):
    bodies = [p.read_bytes() for p, _ in VAL] * 4
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda b: predict(server, b), bodies))
    assert all(r.status_code == 200 for r in results)
    assert max(r.json()["batch_size"] for r in results) > 1
    metrics = httpx.get(server.metrics_url + "/metrics", timeout=10).text
    line = next(x for x in metrics.splitlines() if x.startswith("graft_batch_size_sum") and 'ModelVersion="2"' in x)
    count = next(x for x in metrics.splitlines() if x.startswith("graft_batch_size_count") and 'ModelVersion="2"' in x)
    assert float(line.split()[-1]) > float(count.split()[-1])  # mean images per batch above 1


def _png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 7000)).save(buf, format="PNG")
    return buf.getvalue()


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    return buf.getvalue()


def test_every_bad_input_gets_its_4xx_and_the_server_keeps_serving(server):
    good = VAL[0][0].read_bytes()
    cases = [
        (b"hello, not an image", OCTET, 415, "not_an_image"),
        (good[: len(good) // 3], OCTET, 400, "truncated_image"),
        (_png_bomb(), OCTET, 413, "too_many_pixels"),
        (os.urandom(2_100_000), OCTET, 413, "body_too_large"),  # v2's per-image limit is 2 MB
        (_tiff(), OCTET, 415, "unsupported_format"),
        ('{"data": "%%% not base64"}', {"Content-Type": "application/json"}, 400, "bad_base64"),
        (b"", OCTET, 400, "empty_body"),
        (b"a=b", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "form_content_type"),
    ]
    with ThreadPoolExecutor(len(cases) + 2) as pool:  # bad and good together, so they share batches
        futures = [pool.submit(predict, server, body, hdr) for body, hdr, _, _ in cases]
        goods = [pool.submit(predict, server, good) for _ in range(2)]
        for (_, _, status, reason), f in zip(cases, futures, strict=True):
            r = f.result()
            assert (r.status_code, r.json().get("reason")) == (status, reason), r.text
        assert all(g.result().status_code == 200 for g in goods)
    assert predict(server, good).status_code == 200
    metrics = httpx.get(server.metrics_url + "/metrics", timeout=10).text
    assert 'graft_rejected_inputs_total{ModelName="antsbees",ModelVersion="2",Reason="too_many_pixels"' in metrics


def test_what_the_frontend_does_with_form_encoded_image_bytes(server):
    # TorchServe's frontend decodes form-urlencoded bodies itself; binary JPEG bytes fail there with a 500
    # before any handler runs (no configuration reaches that decoder). Documented: send octet-stream.
    r = predict(server, VAL[0][0].read_bytes(), {"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 500 and "ErrorDataDecoderException" in r.text
    assert predict(server, VAL[0][0].read_bytes()).status_code == 200


def test_body_over_the_frontend_limit_is_413(server):
    r = predict(server, os.urandom(server.config.max_request_bytes + 1024))
    assert r.status_code == 413


def test_calls_without_a_valid_token_are_refused(server):
    img = VAL[0][0].read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{server.inference_url}/predictions/{MODEL}", content=img, headers={**OCTET, **headers})
        assert r.status_code == 400 and "InvalidKeyException" in r.text  # TorchServe answers 400, not 401
    assert httpx.get(f"{server.management_url}/models").status_code == 400
    # the inference key is not a management key
    r = httpx.get(f"{server.management_url}/models", headers=server.headers("inference"))
    assert r.status_code == 400
    assert server.client.management("GET", "/models").status_code == 200


def test_management_cannot_fetch_archives_from_outside_the_store(server, tmp_path):
    outside = tmp_path / "x-1.mar"
    shutil.copy(server.archives[0].path, outside)
    for url in (f"file://{outside}", "http://127.0.0.1:9/x.mar", "../x-1.mar"):
        r = server.client.management("POST", "/models", params={"url": url})
        assert r.status_code == 404, (url, r.text)


def test_key_renewal_through_the_api_key(server):
    old = server.keys().inference
    server.client.keys.renew("inference")
    new = server.keys().inference
    assert new != old
    assert predict(server, VAL[0][0].read_bytes()).status_code == 200


def test_liveness_sets_a_drifted_default_back_and_fails_a_model_left_without_workers(server, monkeypatch):
    from graft.torchserve import probe

    client, args = server.client, ["--inference", server.inference_url, "--management", server.management_url,
                                   "--key-file", str(server.key_file)]  # fmt: skip
    monkeypatch.setenv("GRAFT_DEFAULT_VERSIONS", f"{MODEL}=1")
    client.set_default(MODEL, "2")  # what a stray management call could do
    assert probe.main(["ready", *args]) == 1, "readiness sees the drift"
    assert probe.main(["live", *args]) == 0 and client.default_version(MODEL) == "1", "liveness set it back"
    assert probe.main(["ready", *args]) == 0
    try:
        r = client.management("PUT", f"/models/{MODEL}/1", params={"min_worker": 0, "max_worker": 0,
                                                                  "synchronous": "true"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert probe.main(["live", *args]) == 1, "a model scaled to no worker fails liveness: the pod restarts"
    finally:
        client.management("PUT", f"/models/{MODEL}/1", params={"min_worker": 1, "max_worker": 1, "synchronous": "true"})


def test_stop_leaves_no_process_behind(server):
    tree = server.process_tree()
    assert len(tree) >= 3  # the frontend and one worker per version
    server.stop()
    assert server.process_tree() == []
    import psutil

    def gone() -> bool:
        return not [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, 10, what="every TorchServe process to exit")
    assert not server.key_file.exists()


def test_graft_serve_foreground_no_auth_and_ctrl_c(tmp_path, caplog):
    """The ``serve`` subcommand end to end (TorchServe alone): warning for --no-auth, 'ready', Ctrl-C stops
    the whole tree."""
    store = tmp_path / "store"
    store.mkdir()
    cfg = config(store, tmp_path / "w")
    runner = (
        "import argparse, sys; from graft.cli import setup_logging; from graft import serve as serving; "
        "p = argparse.ArgumentParser(); serving.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); "
        "setup_logging(); sys.exit(a.func(a))"
    )
    cmd = [sys.executable, "-c", runner, "serve", "--model-store", str(store), "--no-auth", "--no-admin",
           "--workdir", str(cfg.workdir),
           "--inference-address", cfg.inference_address, "--management-address", cfg.management_address,
           "--metrics-address", cfg.metrics_address, "--grpc-inference-port", str(cfg.grpc_inference_port),
           "--grpc-management-port", str(cfg.grpc_management_port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "ready" in line or not line:
                break
        assert any("authorization is OFF" in x for x in lines), lines
        assert any("ready" in x for x in lines), lines
        assert httpx.get(cfg.management_address + "/models").status_code == 200  # no token needed
        java = [int(x) for x in subprocess.run(["pgrep", "-f", str(cfg.workdir)], capture_output=True,
                                                text=True).stdout.split()]
        assert java
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    import psutil

    def gone() -> bool:
        return not [p for p in java if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, 10, what="the Java frontend to exit")


def _drain(stream: Any, lines: list[str]) -> None:
    for line in stream:  # read all along, so a full stderr pipe never blocks the server
        lines.append(line)


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:  # gone meanwhile
        return False


def _wait_for_line(proc: subprocess.Popen[str], lines: list[str], pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((m for m in map(re.compile(pattern).search, list(lines)) if m), None)
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"no line matching {pattern!r} (exit code {proc.poll()}):\n{''.join(lines)[-4000:]}")


def _serve_argv(cfg: ServeConfig) -> list[str]:
    """``graft serve`` on the store, work folder and free ports of ``cfg``."""
    return [sys.executable, "-m", "graft.cli", "serve", "--model-store", str(cfg.model_store),
            "--workdir", str(cfg.workdir), "--inference-address", cfg.inference_address,
            "--management-address", cfg.management_address, "--metrics-address", cfg.metrics_address,
            "--grpc-inference-port", str(cfg.grpc_inference_port),
            "--grpc-management-port", str(cfg.grpc_management_port), "--ready-timeout", "240"]


def test_graft_serve_runs_torchserve_and_the_admin_together(artifacts, tmp_path):
    """One command, the whole service: TorchServe with tokens, a --ts-config and a pinned default, the admin
    beside it on a free port; Ctrl-C stops both with exit code 0 and nothing left behind."""
    import psutil

    run, cached = artifacts
    store = tmp_path / "store"
    store.mkdir()
    for version in ("1", "2"):
        shutil.copy(cached / f"{MODEL}-{version}.mar", store)
    ts_config = tmp_path / "ts.properties"
    ts_config.write_text("# cluster tuning\njob_queue_size=50\n")
    cfg = config(store, tmp_path / "w")
    token = "serve-admin-token-0123456789"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env |= {"GRAFT_ADMIN_TOKEN": token, "GRAFT_MODEL_NAME": MODEL, "GRAFT_DEFAULT_VERSIONS": f"{MODEL}=1"}
    cmd = [*_serve_argv(cfg), "--ts-config", str(ts_config), "--admin-port", "0",
           "--admin-state-dir", str(tmp_path / "admin"), "--initial-run", str(run), "--initial-version", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True)
    reader.start()
    tree: list[psutil.Process] = []
    try:
        admin = _wait_for_line(proc, lines, r"admin +(http://127\.0\.0\.1:\d+) ", 300).group(1)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 2  # the Java frontend and a worker: only the pinned default is in the keep set
        assert httpx.get(f"{admin}/healthz", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{admin}/v1/models", timeout=10).status_code == 401
        r = httpx.get(f"{admin}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == MODEL and r.json()["default"] == "1"
        assert [m["version"] for m in r.json()["models"]] == ["1"]
        # The admin reaches TorchServe with its keys and finds the pinned default it expects.
        wait_for(lambda: httpx.get(f"{admin}/readyz", timeout=10).status_code == 200, 60, 0.5, "the admin's /readyz")
        keys = read_keys(cfg.workdir)
        served = httpx.get(f"{cfg.management_address}/models/{MODEL}", timeout=10,
                           headers={"Authorization": f"Bearer {keys.management}"}).json()
        assert [v["modelVersion"] for v in served] == ["1"]  # pinned, although 2 is newer
        # ... and set by graft serve before the admin started, not repaired by the admin's reconciliation.
        assert any(f"ready: {MODEL} v1" in line for line in lines) and not any("reconciled" in x for x in lines)
        assert "job_queue_size=50" in (cfg.workdir / "config.properties").read_text().splitlines()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, "".join(lines)[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    with contextlib.suppress(AssertionError):  # reported below, after cleaning up
        wait_for(lambda: not any(_alive(p) for p in tree), 10, what="every child of graft serve to exit")
    left = [p.pid for p in tree if _alive(p)]
    for pid in left:  # clean up what this test started before failing on it
        os.kill(pid, signal.SIGKILL)
    assert not left
    assert not (cfg.workdir / "key_file.json").exists()
    assert "Traceback" not in "".join(lines)


logging.getLogger("httpx").setLevel(logging.WARNING)
