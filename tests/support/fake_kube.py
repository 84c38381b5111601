"""A fake Kubernetes API server at the HTTP boundary, for driving the real ``kubernetes`` client.

It answers the few endpoints the admin's Kubernetes runner and rollout use (Jobs, pods of a Job, one
Deployment), records every request with its decoded JSON body, and simulates a rolling update:
after a PATCH that changes the pod template, the Deployment reports progress for ``rollout_reads``
reads, then completion; ``rollout_mode`` ``"stall"`` reports ProgressDeadlineExceeded instead, and
``"hang"`` never finishes. No cluster can run in CI, so this is what the kubernetes client talks to.
:class:`FakeTorchServe` answers the three TorchServe reads of the inference pod's readiness probe.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_DEPLOY = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)$")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class FakeKube:
    namespace: str = "graft"
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    requests: list[Recorded] = field(default_factory=list)
    forbid: set[str] = field(default_factory=set)  # methods answered 403
    rollout_reads: int = 2
    rollout_mode: str = "ok"  # ok | stall | hang
    _pending: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]

    # -------------------------------------------------------------- routing

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if method in self.forbid:
            return 403, status_body(403, "Forbidden", "jobs.batch is forbidden: User cannot create")
        if m := _JOBS.match(path):
            return self._jobs(method, m.group(1), m.group(2), body)
        if (m := _PODS.match(path)) and method == "GET":
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": self.pods}
        if (m := _DEPLOY.match(path)) and self.deployment is not None:
            if m.group(2) != self.deployment["metadata"]["name"]:
                return 404, status_body(404, "NotFound", f"deployments.apps {m.group(2)!r} not found")
            return self._deploy(method, body)
        return 404, status_body(404, "NotFound", f"no route for {method} {path}")

    def _jobs(self, method: str, ns: str, name: str | None, body: Any) -> tuple[int, Any]:
        if method == "POST" and name is None:
            name = body["metadata"]["name"]
            if name in self.jobs:
                return 409, status_body(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            job = copy.deepcopy(body)
            job["metadata"]["namespace"] = ns
            job["status"] = {}
            self.jobs[name] = job
            return 201, job
        if name is None or name not in self.jobs:
            return 404, status_body(404, "NotFound", f'jobs.batch "{name}" not found')
        if method == "GET":
            return 200, self.jobs[name]
        if method == "DELETE":
            del self.jobs[name]
            return 200, status_body(200, "Success", "")
        return 405, status_body(405, "MethodNotAllowed", method)

    def _deploy(self, method: str, body: Any) -> tuple[int, Any]:
        dep = self.deployment
        assert dep is not None
        if method == "PATCH":
            before = json.dumps(dep["spec"]["template"], sort_keys=True)
            strategic_merge(dep, body)
            if json.dumps(dep["spec"]["template"], sort_keys=True) != before:
                dep["metadata"]["generation"] += 1
                self._pending = self.rollout_reads
            return 200, dep
        if method == "GET":
            self._advance(dep)
            return 200, dep
        return 405, status_body(405, "MethodNotAllowed", method)

    def _advance(self, dep: dict[str, Any]) -> None:
        want, gen = dep["spec"]["replicas"], dep["metadata"]["generation"]
        done = self._pending <= 0 and self.rollout_mode == "ok"
        self._pending -= 1
        conditions = [{"type": "Available", "status": "True"}]
        if self.rollout_mode == "stall":
            conditions.append(
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "graft-inference-abc" has timed out progressing.',
                }
            )
        dep["status"] = {
            "observedGeneration": gen,
            "replicas": want if done else want + 1,
            "updatedReplicas": want if done else 1,
            "availableReplicas": want,
            "readyReplicas": want,
            "conditions": conditions,
        }


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Success" if code < 400 else "Failure",
        "reason": reason,
        "message": message,
        "code": code,
        "metadata": {},
    }


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Enough of strategic merge for pod templates: maps merge, containers and env merge by name."""
    for key, value in patch.items():
        if key in ("containers", "env") and isinstance(value, list):
            current = target.setdefault(key, [])
            for item in value:
                match = next((c for c in current if c.get("name") == item["name"]), None)
                if match is None:
                    current.append(copy.deepcopy(item))
                else:
                    strategic_merge(match, item)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def deployment(name: str = "graft-inference", env_value: str = "", replicas: int = 2) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "graft", "app.kubernetes.io/component": "inference"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "graft", "generation": 3},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"graft.io/default-versions": env_value, "graft.io/model-store": ""},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "torchserve",
                            "image": "graft:gpu",
                            "env": [
                                {"name": "GRAFT_DEFAULT_VERSIONS", "value": env_value},
                                {"name": "HOME", "value": "/var/run/graft"},
                            ],
                        }
                    ]
                },
            },
        },
        "status": {
            "observedGeneration": 3,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


@dataclass
class FakeTorchServe:
    """TorchServe's ``/ping`` and the two management reads the readiness probe makes."""

    ping_status: int = 200
    workers: dict[str, list[str]] = field(default_factory=dict)  # model -> worker statuses (of version 1)
    # Versions registered besides version 1, the default (GET /models/NAME/all lists them too).
    other_versions: dict[str, list[str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == "/ping":
            return self.ping_status, {"status": "Healthy" if self.ping_status == 200 else "Unhealthy"}
        if path == "/models":
            return 200, {"models": [{"modelName": m, "modelUrl": f"{m}-1.mar"} for m in self.workers]}
        name, _, version = path.removeprefix("/models/").partition("/")  # NAME, NAME/VERSION or NAME/all
        if name in self.workers:
            workers = [{"id": str(9000 + i), "status": s} for i, s in enumerate(self.workers[name])]
            default = {"modelName": name, "modelVersion": "1", "minWorkers": 1, "workers": workers}
            if version == "all":
                return 200, [default, *({**default, "modelVersion": v} for v in self.other_versions.get(name, []))]
            return 200, [default]
        return 404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {name}"}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKube | FakeTorchServe

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.fake.lock:
            self.fake.requests.append(
                Recorded(self.command, url.path, parse_qs(url.query), self.headers.get("Content-Type", ""), body)
            )
            code, answer = self.fake.handle(self.command, url.path, parse_qs(url.query), body)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


class FakeServer:
    """``with FakeServer(fake) as url:`` serves ``fake`` on a free local port."""

    def __init__(self, fake: FakeKube | FakeTorchServe) -> None:
        handler = type("Handler", (_Handler,), {"fake": fake})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@contextlib.contextmanager
def api_client(url: str) -> Iterator[Any]:
    """The real ``kubernetes`` client, pointed at a fake server."""
    from kubernetes import client

    c = client.ApiClient(client.Configuration(host=url))
    try:
        yield c
    finally:
        c.close()


def fake_config(tmp_path: Path) -> Any:
    """KubeConfig with the data volume and the model store in ``tmp_path``, and fast polling."""
    from admin.cluster import KubeConfig

    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    return KubeConfig(
        namespace="graft",
        image="registry.example/graft:1.0-gpu",
        data_mount_path=tmp_path / "data",
        model_store_dir=store,
        poll_interval_s=0.01,
        rollout_timeout_s=5,
    )


def mar(path: Path, name: str = "graft", version: str = "2") -> Path:
    """A minimal model archive: a zip with TorchServe's manifest."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": name, "modelVersion": version}}))
    return path
