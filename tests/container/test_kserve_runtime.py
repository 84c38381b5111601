"""The KServe runtime in the SAME image (``make image-test``): the kserve-runtime overlay's inference
container, run as Kubernetes would run it (user 10001, read-only root, its volumes), answers KServe v1 and
OIP v2 from outside the container, its probes pass, it writes nothing to the image and stops cleanly."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.container.engine import Engine, Volumes, pod_run_args, run_detached, writable_folder
from tests.container.test_container import (
    READY_TIMEOUT_S,
    USER,
    assert_root_is_read_only,
    config_maps,
    processes_users,
)
from tests.support.artifacts import MODEL, images, reference_probs
from tests.support.paths import REPO
from tests.support.waiting import wait_for

pytestmark = pytest.mark.image


def _kserve_inference() -> tuple[dict[str, Any], dict[str, Any]]:
    """(container, pod spec) of graft-inference as deploy/overlays/kserve-runtime renders it."""
    from tests.deploy.test_manifests import kustomize_cmd

    out = subprocess.run([*kustomize_cmd(), str(REPO / "deploy/overlays/kserve-runtime")], capture_output=True,
                         text=True, check=True, timeout=120)  # fmt: skip
    dep = next(d for d in yaml.safe_load_all(out.stdout)
               if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "graft-inference")  # fmt: skip
    pod = dep["spec"]["template"]["spec"]
    return pod["containers"][0], pod


def _ok(url: str, path: str) -> bool:
    try:
        return httpx.get(f"{url}{path}", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_kserve_runtime_in_the_same_image(engine: Engine, image: str, model_store: Path, tmp_path: Path) -> None:
    container, pod = _kserve_inference()
    assert container["command"][-2:] == ["-m", "graft.kserve.server"]
    provided = Volumes(claims={"graft-model-store": model_store,
                               "graft-captures": writable_folder(tmp_path / "captures")},
                       config_maps=config_maps(), workdir=tmp_path)  # fmt: skip
    with run_detached(engine, image, pod_run_args(engine, container, pod, provided), "kserve") as c:
        url = c.url(8080)
        probe = container["startupProbe"]["httpGet"]["path"]
        wait_for(lambda: _ok(url, probe) or not c.running(), READY_TIMEOUT_S, interval=2, what=f"{probe} 200")
        assert c.running(), c.logs()
        assert _ok(url, container["livenessProbe"]["httpGet"]["path"])

        run_dir = model_store.parent / "run"
        val = images("val", per_class=2, offset=20)
        ref = reference_probs(run_dir, [p for p, _ in val])
        for (img, _), probs in zip(val, ref, strict=True):
            data = base64.b64encode(img.read_bytes()).decode()
            r = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [{"data": data}]}, timeout=60)
            assert r.status_code == 200, r.text
            top = r.json()["predictions"][0][0]
            assert top["label"] == ["ants", "bees"][int(probs.argmax())]
            assert top["score"] == pytest.approx(float(probs.max()), abs=0.02)
            v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}
            r = httpx.post(f"{url}/v2/models/{MODEL}-v1/infer", json=v2, timeout=60)
            assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        bad = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"data": "aGVsbG8="}, timeout=30)
        assert bad.status_code == 415, bad.text
        assert "graft_predictions_total" in httpx.get(f"{url}/metrics", timeout=30).text

        assert processes_users(c) == {USER}
        assert_root_is_read_only(c, engine)
        code, took = c.stop(pod["terminationGracePeriodSeconds"])
        assert code == 0 and took < pod["terminationGracePeriodSeconds"], (code, took, c.logs())
