"""The built image, run as a user and as Kubernetes would: ``make image-test`` (minutes; not in ``make test``).

Every command line of deploy/ runs once in the image, read from the manifests themselves (so a changed
manifest is what gets run): the inference pod's init container, TorchServe, its startup, readiness and
liveness probes and its preStop hook; the admin pod; the first training Job. Each runs with its pod's
security context (user 10001, read-only root file system, every capability dropped, no privilege
escalation) and volumes (emptyDir: tmpfs; PVC: a folder here; ConfigMap and Secret: read-only files),
and its exit code is checked. The image's own ENTRYPOINT and CMD run as the README's ``docker run``
does, until the engine says its HEALTHCHECK passes. Predictions and the admin API are asked over HTTP
from outside the container, on ports of 127.0.0.1 that the engine publishes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.container.engine import (
    Engine,
    Running,
    Volumes,
    image_config,
    is_root,
    pod_run_args,
    run_detached,
    run_once,
    writable_folder,
)
from tests.support.artifacts import MODEL, images, reference_probs
from tests.support.paths import HYMENOPTERA, REPO

pytestmark = pytest.mark.image

DEPLOY = REPO / "deploy"
READY_TIMEOUT_S = 600  # two archives on a busy 2-core machine; the startup probe allows 30 minutes
USER = "10001"


def manifest(path: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / path).read_text())
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def config_maps() -> dict[str, dict[str, str]]:
    cm = manifest("base/torchserve-configmap.yaml")
    return {cm["metadata"]["name"]: cm["data"]}


def processes_users(c: Running) -> set[str]:
    """The real user of every process in the container (tini, graft, java, the Python workers)."""
    out = c.exec("python", "-c", "import psutil; print(sorted({p.uids().real for p in psutil.process_iter()}))")
    assert out.returncode == 0, out.stderr
    return {str(u) for u in json.loads(out.stdout)}


def assert_root_is_read_only(c: Running, engine: Engine) -> None:
    for path in ("/opt/venv/graft-probe", "/home/graft/graft-probe", "/graft-probe"):
        out = c.exec("sh", "-c", f"touch {path}")
        assert out.returncode != 0, f"{path} is writable: the root file system is not read-only"
        assert "Read-only file system" in out.stderr, out.stderr
    assert c.changed_files() == [], "the container changed its image's file system"


def predict(url: str, image: Path, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", content=image.read_bytes(), headers={"Content-Type": "image/jpeg", **(headers or {})},
        timeout=60,
    )  # fmt: skip


# ------------------------------------------------------------------ the image itself


def test_image_runs_as_graft_with_a_healthcheck(engine: Engine, image: str) -> None:
    cfg = image_config(engine, image)
    config = cfg.get("Config") or cfg["ContainerConfig"]
    assert config["User"].split(":")[0] == USER
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "graft", "serve"]
    # Docker keeps it in Config, podman beside it; podman's default OCI format drops it (--format docker).
    test = (config.get("Healthcheck") or cfg.get("Healthcheck") or {}).get("Test", [])
    assert any("/readyz" in part for part in test), f"no HEALTHCHECK in the image: {test}"
    assert {"8080/tcp", "8081/tcp", "8082/tcp", "8090/tcp"} <= set(config["ExposedPorts"])
    # What the build mounted (the pip-config context) left nothing behind.
    out = run_once(engine, image, ["--entrypoint", "sh", "--image--", "-c", "ls -A /run /etc/pip.conf 2>&1"], 120)
    assert "pip-config" not in out.stdout and "No such file" in out.stdout, out.stdout


_DIGESTS = """
import hashlib, importlib, json, pathlib
out = {}
for pkg in ("graft", "training", "handlers", "admin"):
    root = pathlib.Path(importlib.import_module(pkg).__file__).parent
    out.update({f"{pkg}/{p.relative_to(root)}": hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.py")})
print(json.dumps(out))
"""


def test_the_image_carries_this_checkout(engine: Engine, image: str) -> None:
    """graft's files in the image are this checkout's: a stale layer (a build cache that missed a change) shows here."""
    out = run_once(engine, image, ["--entrypoint", "python", "--image--", "-c", _DIGESTS], 120)
    assert out.returncode == 0, out.stderr
    inside = json.loads(out.stdout)
    here = {
        f"{pkg}/{p.relative_to(REPO / pkg)}": hashlib.sha256(p.read_bytes()).hexdigest()
        for pkg in ("graft", "training", "handlers", "admin")
        for p in (REPO / pkg).rglob("*.py")
    }
    assert inside == here, f"differ: {sorted(k for k in inside.keys() | here.keys() if inside.get(k) != here.get(k))}"


def test_the_image_refuses_to_serve_without_an_admin_token(engine: Engine, image: str, model_store: Path) -> None:
    """The default CMD starts the admin too: without a token it must stop at once with a clear error."""
    store = f"{model_store}:/home/graft/model-store:ro"
    out = run_once(engine, image, ["--read-only", "--tmpfs", "/tmp", "-v", store], 300)
    assert out.returncode == 2, out
    assert "no admin token" in out.stdout + out.stderr


# ------------------------------------------------------------------ the inference pod


def test_inference_pod_command_lines(engine: Engine, image: str, model_store: Path, tmp_path: Path) -> None:
    dep = manifest("base/inference-deployment.yaml")
    pod = pod_spec(dep)
    (init,) = pod["initContainers"]
    (ts,) = pod["containers"]
    captures = writable_folder(tmp_path / "captures")
    provided = Volumes(
        claims={"graft-model-store": model_store, "graft-captures": captures},
        config_maps=config_maps(), workdir=tmp_path,
    )  # fmt: skip

    # The init container: waits while the store is empty, passes once a .mar is there.
    empty = Volumes(claims={"graft-model-store": writable_folder(tmp_path / "empty")})
    with run_detached(engine, image, pod_run_args(engine, init, pod, empty), "init-empty") as waiting:
        time.sleep(5)
        assert waiting.running(), f"wait-for-model ended with an empty store:\n{waiting.logs()}"
        assert "waiting for a .mar" in waiting.logs()
    done = run_once(engine, image, pod_run_args(engine, init, pod, provided), timeout=120)
    assert done.returncode == 0, done

    with run_detached(engine, image, pod_run_args(engine, ts, pod, provided), "inference") as c:
        # The kubelet's view: the startup probe until it passes, then readiness and liveness.
        startup = c.wait_exec(ts["startupProbe"]["exec"]["command"], READY_TIMEOUT_S)
        assert set(startup[:-1]) <= {1}, f"the startup probe exited with {startup}"
        assert c.exec(*ts["readinessProbe"]["exec"]["command"]).returncode == 0
        assert c.exec(*ts["livenessProbe"]["exec"]["command"]).returncode == 0

        # Predictions from outside the container, answered by graft's handler, both versions.
        run_dir = model_store.parent / "run"
        val = images("val", per_class=2, offset=20)
        ref = reference_probs(run_dir, [p for p, _ in val])
        url = c.url(8080)
        for path, version in ((f"/predictions/{MODEL}", "2"), (f"/predictions/{MODEL}/1", "1")):
            for (img, _), probs in zip(val, ref, strict=True):
                r = predict(url, img, path)
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["model_version"] == version, body
                assert body["predictions"][0]["label"] == ["ants", "bees"][int(probs.argmax())]
                assert body["predictions"][0]["score"] == pytest.approx(float(probs.max()), abs=0.02)
        # Management listens on the pod's loopback only (its probes are its one caller): from inside it
        # lists the model but registers nothing (the ConfigMap's setting); nothing publishes it outside.
        assert 8081 not in {p["containerPort"] for p in ts["ports"]}
        models = json.loads(_inside(c, "GET", "http://127.0.0.1:8081/models"))
        assert models["status"] == 200 and [m["modelName"] for m in models["body"]["models"]] == [MODEL]
        register = json.loads(_inside(c, "POST", "http://127.0.0.1:8081/models?url=x.mar"))
        assert register["status"] >= 400, register
        metrics = httpx.get(f"{c.url(8082)}/metrics", timeout=30).text
        assert "ts_inference_requests_total" in metrics or "ts_queue_latency" in metrics, metrics[:500]

        assert processes_users(c) == {USER}
        assert_root_is_read_only(c, engine)

        # preStop, then the stop itself within the pod's grace period, cleanly.
        pre_stop = ts["lifecycle"]["preStop"]["exec"]["command"]
        assert c.exec(*pre_stop, timeout=60).returncode == 0
        code, took = c.stop(pod["terminationGracePeriodSeconds"])
        assert code == 0 and took < pod["terminationGracePeriodSeconds"], (code, took, c.logs())

    # Liveness fails where TorchServe does not answer: the probe can tell.
    live = ts["livenessProbe"]["exec"]["command"]
    dead = run_once(engine, image, pod_run_args(engine, ts, pod, provided, command=live), 120)
    assert dead.returncode == 1, dead


_REQUEST = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(urllib.request.Request(sys.argv[2], method=sys.argv[1]), timeout=30) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(json.dumps({"status": status, "body": json.loads(body or b"null")}))
"""


def _inside(c: Running, method: str, url: str) -> str:
    """An HTTP request from inside the container (to what listens on its loopback only); its JSON answer."""
    out = c.exec("python", "-c", _REQUEST, method, url)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------ the admin pod


def _admin_secrets(tmp_path: Path) -> tuple[Path, str]:
    """The graft-admin-token Secret as Kubernetes mounts it (defaultMode 0440, group fsGroup)."""
    token = secrets.token_hex(32)
    folder = tmp_path / "secret-admin"
    folder.mkdir()
    (folder / "token").write_text(token)
    if is_root():
        shutil.chown(folder / "token", 0, int(USER))
        (folder / "token").chmod(0o440)
    else:
        (folder / "token").chmod(0o444)
    return folder, token


def _service_account(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """What Kubernetes gives a pod with automountServiceAccountToken: the admin builds its API client from
    it at start. No request reaches an API server in this test (no job is started), so a placeholder
    token and CA do."""
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("placeholder-service-account-token")
    (folder / "ca.crt").write_text("placeholder CA: never used without a request\n")
    (folder / "namespace").write_text("graft")
    for f in folder.iterdir():
        f.chmod(0o444)
    return folder, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_admin_pod_command_line(engine: Engine, image: str, tmp_path: Path) -> None:
    dep = manifest("base/admin-deployment.yaml")
    pod = pod_spec(dep)
    (admin,) = pod["containers"]
    token_dir, token = _admin_secrets(tmp_path)
    samples_token = secrets.token_hex(32)
    sa_dir, sa_env = _service_account(tmp_path)
    provided = Volumes(
        claims={"graft-admin-data": writable_folder(tmp_path / "data"),
                "graft-admin-db": writable_folder(tmp_path / "db"),
                "graft-captures": writable_folder(tmp_path / "captures"),
                "graft-model-store": writable_folder(tmp_path / "store")},
        secrets={"graft-admin-token": token_dir},
    )  # fmt: skip
    args = pod_run_args(
        engine, admin, pod, provided, secret_env={"graft-admin-token": {"samples-token": samples_token}},
        extra_env=sa_env,
    )  # fmt: skip
    i = args.index("--entrypoint")
    args[i:i] = ["-v", f"{sa_dir}:/var/run/secrets/kubernetes.io/serviceaccount:ro"]
    with run_detached(engine, image, args, "admin") as c:
        url = c.url(8090)
        _wait_http(c, f"{url}{admin['livenessProbe']['httpGet']['path']}", 180)
        # Readiness waits for the first model (the README's training Job puts it in the store) and for the
        # inference Deployment to serve it; with an empty store the probe answers 503 and says so.
        ready = httpx.get(f"{url}{admin['readinessProbe']['httpGet']['path']}", timeout=10)
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["checks"]["database"] and not body["checks"]["champion"], body
        assert "no model in service yet" in body["detail"], body

        # The token from the mounted Secret file guards the API; a sample lands on the data volume.
        assert httpx.get(f"{url}/v1/samples/stats", timeout=10).status_code == 401
        # The label set is the admin's: the samples token may use "ants" once an admin approved it.
        admin_auth = {"Authorization": f"Bearer {token}"}
        approve = httpx.post(f"{url}/v1/labels", json={"name": "ants"}, headers=admin_auth, timeout=30)
        assert approve.status_code == 201, approve.text
        ant = HYMENOPTERA / "train" / "ants"
        first = sorted(ant.glob("*.jpg"))[0]
        r = httpx.post(
            f"{url}/v1/samples", files={"file": (first.name, first.read_bytes(), "image/jpeg")},
            data={"label": "ants"}, headers={"Authorization": f"Bearer {samples_token}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        stats = httpx.get(f"{url}/v1/samples/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert stats.status_code == 200, stats.text
        # The database on its own volume (GRAFT_DB_DIR), the sample's file on the data volume.
        assert (tmp_path / "db" / "admin.sqlite3").is_file()
        sent = first.read_bytes()
        assert any(p.is_file() and p.read_bytes() == sent for p in (tmp_path / "data").rglob("*"))

        assert processes_users(c) == {USER}
        assert_root_is_read_only(c, engine)
        code, _ = c.stop(30)
        assert code == 0, (code, c.logs())


def _wait_http(c: Running, url: str, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        assert c.running(), f"the container stopped:\n{c.logs()}"
        try:
            r = httpx.get(url, timeout=10)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not 200 after {timeout:.0f}s:\n{c.logs()}"
        time.sleep(2)


# ------------------------------------------------------------------ the first training Job


def test_training_job_command_line(engine: Engine, image: str, tmp_path: Path) -> None:
    """deploy/jobs/train-job.yaml's command, on the CPU (the one change: ``--device cuda`` -> ``cpu``),
    on a small part of the ants/bees set copied onto the data volume as the README says."""
    job = manifest("jobs/train-job.yaml")
    pod = pod_spec(job)
    (train,) = pod["containers"]
    data = writable_folder(tmp_path / "data")
    for split, n in (("train", 16), ("val", 8)):
        for label in ("ants", "bees"):
            dst = writable_folder(data / "base-data" / split / label)
            for src in sorted((HYMENOPTERA / split / label).glob("*.jpg"))[:n]:
                shutil.copy(src, dst / src.name)
                (dst / src.name).chmod(0o644)
    writable_folder(data / "runs")
    store = writable_folder(tmp_path / "store")
    script = train["args"][0]
    assert "--device cuda" in script
    command = [*train["command"], script.replace("--device cuda", "--device cpu")]
    provided = Volumes(claims={"graft-admin-data": data, "graft-model-store": store})
    out = run_once(engine, image, pod_run_args(engine, train, pod, provided, command=command), timeout=900)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert (store / "graft-1.mar").is_file(), sorted(p.name for p in store.iterdir())
    card = json.loads((data / "runs" / "initial" / "model.json").read_text())
    assert card["backbone"] == "efficientnet_lite0"


# ------------------------------------------------------------------ the image's own ENTRYPOINT and CMD


def test_default_command_serves_and_its_healthcheck_passes(engine: Engine, image: str, writable_store: Path) -> None:
    """README's ``docker run``: TorchServe with tokens plus the admin, read-only root with a plain
    ``--tmpfs /tmp`` (noexec), the admin's state on a named volume (owned by the image's user)."""
    admin_token = secrets.token_hex(32)
    state = f"graft-test-state-{secrets.token_hex(4)}"
    args = [
        "--read-only", *(["--read-only-tmpfs=false"] if engine.podman else []),
        "--tmpfs", "/tmp", "--cap-drop=ALL", "--security-opt=no-new-privileges",
        "-v", f"{writable_store}:/home/graft/model-store:rw", "-v", f"{state}:/var/lib/graft",
        "-e", f"GRAFT_ADMIN_TOKEN={admin_token}",
        "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8090",
    ]  # fmt: skip
    engine("volume", "create", state)
    try:
        _serve_default_command(engine, image, args)
    finally:
        engine("volume", "rm", "-f", state, check=False)


def _serve_default_command(engine: Engine, image: str, args: list[str]) -> None:
    with run_detached(engine, image, args, "default") as c:
        if engine.podman:  # no systemd timers here: run the image's HEALTHCHECK the way its timer would
            codes = c.wait_engine(["healthcheck", "run", c.name], READY_TIMEOUT_S)
        else:
            test = image_config(engine, image)["Config"]["Healthcheck"]["Test"]
            codes = c.wait_exec(test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]], READY_TIMEOUT_S)
        assert codes[-1] == 0
        # The admin adopted the store's newest archive as the model in service.
        ready = httpx.get(f"{c.url(8090)}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["default_version"] == "2", ready.text

        # TorchServe runs with token authorization here: the key file is in its work folder, on the state volume.
        keys = c.exec("cat", "/var/lib/graft/admin/torchserve/key_file.json")
        assert keys.returncode == 0, keys.stderr
        key = json.loads(keys.stdout)["inference"]["key"]
        img = images("val", per_class=1, offset=20)[0][0]
        refused = predict(c.url(8080), img, f"/predictions/{MODEL}")
        assert refused.status_code == 400 and "InvalidKeyException" in refused.text  # TorchServe's 401
        r = predict(c.url(8080), img, f"/predictions/{MODEL}", {"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["model_version"] == "2", r.text

        # The admin's SQLite file is on the volume.
        assert c.exec("test", "-s", "/var/lib/graft/admin/admin.sqlite3").returncode == 0

        assert processes_users(c) == {USER}
        assert_root_is_read_only(c, engine)
        code, _ = c.stop(60)
        assert code == 0, (code, c.logs())
