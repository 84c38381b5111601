"""``graft serve`` adopts what it serves and keeps the version in service across restarts (real TorchServe,
real HTTP, real training on ants/bees from ../shared, ``graft serve`` as a child process like a user runs it).

* a model exported by hand as ``ab``, served with only the admin token set: the admin lists it as the
  default with its metrics, finds its base data from its card, retrains on posted samples, and ``ab`` v2
  answers; a restart answers from v2 from its first request and loads only the keep set; ``kill -9`` of
  ``graft serve`` leaves no process behind and frees its ports;
* ``graft serve RUN_DIR --dev-token``: the short path, with a generated token file;
* a store with two model names and no ``--model-name`` is refused, naming both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from graft.core.errors import UpstreamError
from graft.torchserve.client import TorchServeClient
from graft.torchserve.launcher import free_ports, port_in_use
from tests.support.auth import ADMIN_TOKEN
from tests.support.paths import REPO
from tests.support.waiting import wait_for, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]


def graft(*args: str | Path) -> None:
    cmd = [sys.executable, "-m", "graft.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def jpegs(root: Path, split: str, label: str) -> list[Path]:
    return sorted(p for p in (root / split / label).iterdir() if p.suffix.lower() == ".jpg")


@pytest.fixture(scope="module")
def ab_run(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, mobilenet_weights: Path) -> Path:
    """A weak first model (2 training images per class) whose card records its data folder."""
    root = tmp_path_factory.mktemp("ab")
    for label in ("ants", "bees"):
        for split, files in (("train", jpegs(hymenoptera, "train", label)[:2]),
                             ("val", jpegs(hymenoptera, "val", label)[:8])):  # fmt: skip
            (root / "data" / split / label).mkdir(parents=True)
            for f in files:
                (root / "data" / split / label / f.name).symlink_to(f)
    run = root / "runs" / "ab"
    graft("train", "--data", root / "data", "--output", run, "--backbone", "mobilenet_v2",
          "--weights", mobilenet_weights, "--epochs", "3")  # fmt: skip
    return run


class Serve:
    """``graft serve ARGS`` on free ports, its log read all along; an admin client and a TorchServe client."""

    def __init__(self, args: list[str | Path], state: Path, env: dict[str, str]):
        inf, mgmt, met, g1, g2, adm = free_ports(6)
        self.ports = [inf, mgmt, met, g1, g2, adm]
        cmd = [sys.executable, "-m", "graft.cli", "serve", *map(str, args), "--admin-state-dir", str(state),
               "--admin-port", str(adm), "--inference-address", f"http://127.0.0.1:{inf}",
               "--management-address", f"http://127.0.0.1:{mgmt}", "--metrics-address", f"http://127.0.0.1:{met}",
               "--grpc-inference-port", str(g1), "--grpc-management-port", str(g2)]  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**clean, **env}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr or []), daemon=True).start()
        self.admin_url = f"http://127.0.0.1:{adm}"
        self.ts = TorchServeClient(f"http://127.0.0.1:{mgmt}", f"http://127.0.0.1:{inf}",
                                   state / "torchserve" / "key_file.json")  # fmt: skip

    def api(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, "graft serve exited:\n" + "".join(self.lines[-40:])
            try:
                return httpx.get(f"{self.admin_url}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 300, 0.5, "graft serve to be ready")

    def tree(self) -> list[psutil.Process]:
        return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(120) == 0, "".join(self.lines[-40:])
        self.ts.close()


@pytest.fixture
def cleanup() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        for p in psutil.process_iter(["cmdline"]):
            if any(str(s.ts.keys.key_file.parent) in part for part in p.info["cmdline"] or []):
                p.kill()


def _alive(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


def test_an_exported_model_is_adopted_retrained_and_kept_across_restarts(
    ab_run: Path, hymenoptera: Path, tmp_path: Path, cleanup: list[Serve]
) -> None:
    store, state = tmp_path / "store", tmp_path / "state"
    graft("export", ab_run, "--model-store", store, "--name", "ab", "--version", "1")
    first = Serve(["--model-store", store], state, {"GRAFT_ADMIN_TOKEN": ADMIN_TOKEN})
    cleanup.append(first)
    first.wait_ready()
    for proc in first.tree()[1:]:  # Java and its workers: archive code on untrusted input, no tokens
        assert ADMIN_TOKEN.encode() not in Path(f"/proc/{proc.pid}/environ").read_bytes(), proc.cmdline()
    with first.api() as api:
        ready = api.get("/readyz").json()
        assert ready["model_name"] == "ab" and ready["warnings"] == [], ready  # base data found from the card
        models = api.get("/v1/models").json()
        (v1,) = models["models"]
        assert models["model_name"] == "ab" and models["default"] == "1" and v1["default"]
        assert v1["metrics"]["training"]["val_accuracy"] > 0 and v1["labels"] == ["ants", "bees"]
        for label in ("ants", "bees"):
            files = [("file", (f.name, f.read_bytes(), "image/jpeg")) for f in jpegs(hymenoptera, "train", label)[2:14]]
            assert api.post("/v1/samples/batch", files=files, data={"label": label}).status_code == 201
        job = wait_job(api, api.post("/v1/retrain").json()["job_id"], timeout=600)
        assert job["status"] == "succeeded" and job["candidate_version"] == "2", job
    probe = jpegs(hymenoptera, "val", "bees")[-1].read_bytes()
    assert first.ts.predict("ab", probe).json()["model_version"] == "2"
    first.stop()

    again = Serve(["--model-store", store], state, {"GRAFT_ADMIN_TOKEN": ADMIN_TOKEN, "GRAFT_KEEP_VERSIONS": "1"})
    cleanup.append(again)
    # Pinned before TorchServe loads anything: the first answer after readiness is the version in service.
    def v2_ready() -> bool:
        try:
            return again.ts.ready_workers("ab", "2") > 0
        except UpstreamError:  # not listening yet, or its key file not written yet
            return False

    wait_for(v2_ready, 300, 0.5, "v2's worker")
    assert again.ts.predict("ab", probe).json()["model_version"] == "2"
    assert again.ts.versions("ab") == ["2"], "only the keep set (GRAFT_KEEP_VERSIONS=1) is loaded"
    assert [p.name for p in store.glob("*.mar")] == ["ab-2.mar"] and (state / "archive" / "ab-1.mar").is_file()
    again.wait_ready()

    tree = again.tree()
    assert len(tree) >= 3  # graft serve, Java, a worker
    os.kill(again.proc.pid, signal.SIGKILL)
    again.proc.wait(10)
    wait_for(lambda: not _alive(tree), 10, 0.2, "every process of graft serve to die with it")
    wait_for(lambda: not any(port_in_use("127.0.0.1", p) for p in again.ports), 10, 0.2, "its ports to be free")


def test_serve_a_run_folder_with_a_development_token(ab_run: Path, tmp_path: Path, cleanup: list[Serve]) -> None:
    state = tmp_path / "state"
    serve = Serve([ab_run, "--dev-token"], state, {})
    cleanup.append(serve)
    serve.wait_ready()
    token_file = state / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    with serve.api(token_file.read_text().strip()) as api:
        models = api.get("/v1/models").json()
        assert models["model_name"] == "ab" and models["default"] == "1", models
    assert (state / "model-store" / "ab-1.mar").is_file()
    assert any(str(token_file) in line for line in serve.lines), "graft serve says where the token is"
    assert serve.ts.predict("ab", next(ab_run.parent.parent.joinpath("data/val/ants").iterdir()).read_bytes()
                            ).json()["model_version"] == "1"  # fmt: skip
    serve.stop()


def test_a_store_with_two_models_and_no_name_is_refused(ab_run: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    graft("export", ab_run, "--model-store", store, "--name", "ants", "--version", "1", "--no-onnx",
          "--backend", "torch")  # fmt: skip
    graft("export", ab_run, "--model-store", store, "--name", "wasps", "--version", "1", "--no-onnx",
          "--backend", "torch")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")} | {"GRAFT_ADMIN_TOKEN": ADMIN_TOKEN}
    out = subprocess.run([sys.executable, "-m", "graft.cli", "serve", "--model-store", str(store),
                          "--admin-state-dir", str(tmp_path / "state")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "ants" in out.stderr and "wasps" in out.stderr and "--model-name" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "state" / "torchserve").exists(), "nothing started"
