"""Running graft's image the way Kubernetes runs it, with podman (or Docker) on this machine.

:func:`pod_run_args` turns one container of a manifest into ``ENGINE run`` arguments:

* ``command``/``args`` become ``--entrypoint`` and the arguments (``command`` replaces the image's
  ENTRYPOINT and drops its CMD, as in Kubernetes), ``workingDir`` ``--workdir``, ``env`` ``-e``;
* the pod's and the container's security context become ``--user``/``--group-add``, ``--read-only``
  (and no other writable place than the volumes), ``--cap-drop ALL`` and ``no-new-privileges``;
* volumes: ``emptyDir`` a tmpfs of its ``sizeLimit`` (``/dev/shm`` through ``--shm-size``), a
  ``persistentVolumeClaim`` a folder of this machine, a ``configMap`` its data written to files, a
  ``secret`` a folder the caller fills; read-only where the manifest says so;
* each ``containerPort`` is published on a free port of 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.paths import REPO

NAMESPACE = "graft"


@dataclass(frozen=True)
class Engine:
    """``podman`` or ``docker``."""

    exe: str

    @property
    def podman(self) -> bool:
        return Path(self.exe).name == "podman"

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"{self.exe} {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out


def find_engine() -> tuple[Engine | None, str]:
    """(the engine, "") or (None, why there is none), decided by deploy/docker/engine.sh as for the build."""
    out = subprocess.run(
        [str(REPO / "deploy/docker/engine.sh")], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        return None, out.stderr.strip() or f"deploy/docker/engine.sh exited {out.returncode}"
    return Engine(out.stdout.strip()), ""


def _size(limit: str | None) -> str:
    """A Kubernetes quantity (``10Gi``, ``512Mi``) as a tmpfs/shm size (``10g``, ``512m``)."""
    if not limit:
        return "1g"
    for suffix, unit in (("Gi", "g"), ("Mi", "m"), ("Ki", "k")):
        if limit.endswith(suffix):
            return limit[: -len(suffix)] + unit
    return limit


@dataclass
class Volumes:
    """What this machine provides for the pod's volumes that are not scratch space."""

    claims: Mapping[str, Path] = field(default_factory=dict)  # claimName -> folder
    secrets: Mapping[str, Path] = field(default_factory=dict)  # secretName -> folder of files
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> data
    workdir: Path | None = None  # where ConfigMap files are written


def volume_args(container: dict[str, Any], pod: dict[str, Any], provided: Volumes) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args: list[str] = []
    for mount in container.get("volumeMounts", []):
        path, vol = mount["mountPath"], volumes[mount["name"]]
        ro = mount.get("readOnly", False)
        if "emptyDir" in vol:
            size = _size(vol["emptyDir"].get("sizeLimit"))
            # An emptyDir is an ordinary writable folder (exec allowed), world-writable like Kubernetes'.
            if path == "/dev/shm":
                args += [f"--shm-size={size}"]
            else:
                args += ["--tmpfs", f"{path}:rw,exec,mode=0777,size={size}"]
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]
            ro = ro or claim.get("readOnly", False)
            source = provided.claims[claim["claimName"]]
            if mount.get("subPath"):  # the kubelet creates a missing subPath in the volume
                source = writable_folder(source / mount["subPath"])
            args += ["-v", f"{source}:{path}:{'ro' if ro else 'rw'}"]
        elif "configMap" in vol:
            assert provided.workdir is not None, "config maps need a workdir"
            folder = provided.workdir / f"configmap-{vol['configMap']['name']}"
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in provided.config_maps[vol["configMap"]["name"]].items():
                (folder / key).write_text(text)
                (folder / key).chmod(0o644)
            args += ["-v", f"{folder}:{path}:ro"]
        elif "secret" in vol:
            args += ["-v", f"{provided.secrets[vol['secret']['secretName']]}:{path}:ro"]
        else:
            raise AssertionError(f"volume type of {vol} has no stand-in here")
    return args


def security_args(container: dict[str, Any], pod: dict[str, Any], engine: Engine) -> list[str]:
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    args: list[str] = []
    user, group = csc.get("runAsUser", psc.get("runAsUser")), csc.get("runAsGroup", psc.get("runAsGroup"))
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if psc.get("fsGroup") is not None:
        args += ["--group-add", str(psc["fsGroup"])]
    if csc.get("readOnlyRootFilesystem"):
        args += ["--read-only"]
        if engine.podman:  # podman adds tmpfs on /tmp, /run, /var/tmp to --read-only; Kubernetes does not
            args += ["--read-only-tmpfs=false"]
    if "ALL" in csc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop=ALL"]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt=no-new-privileges"]
    return args


def env_args(container: dict[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> list[str]:
    args: list[str] = []
    for e in container.get("env", []):
        if "value" in e:
            value = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", e
            value = NAMESPACE
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            found = secrets.get(ref["name"], {}).get(ref["key"])
            if found is None:
                assert ref.get("optional"), f"secret {ref['name']}/{ref['key']} is required by {e['name']}"
                continue
            value = found
        args += ["-e", f"{e['name']}={value}"]
    return args


def pod_run_args(
    engine: Engine,
    container: dict[str, Any],
    pod: dict[str, Any],
    provided: Volumes,
    *,
    secret_env: Mapping[str, Mapping[str, str]] | None = None,
    extra_env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> list[str]:
    """``ENGINE run`` arguments (before the image) and, after the marker ``--image--``, the command line."""
    args = security_args(container, pod, engine) + volume_args(container, pod, provided)
    args += env_args(container, secret_env or {})
    args += [a for k, v in (extra_env or {}).items() for a in ("-e", f"{k}={v}")]
    if container.get("workingDir"):
        args += ["--workdir", container["workingDir"]]
    args += [a for p in container.get("ports", []) for a in ("-p", f"127.0.0.1::{p['containerPort']}")]
    argv = list(command if command is not None else [*container.get("command", []), *container.get("args", [])])
    assert argv, "a container without a command runs the image's own ENTRYPOINT: not what the manifests do"
    # --entrypoint takes one program in Docker: the rest of the command goes after the image.
    return [*args, "--entrypoint", argv[0], "--image--", *argv[1:]]


def mount_points(run_args: Sequence[str]) -> set[str]:
    """Where ``run_args`` mount something (``-v``, ``--tmpfs``), with every folder above: the engine
    creates them in the container's layer, and only them."""
    # The engine's own: /etc/hosts, /etc/hostname, /etc/resolv.conf, /run/.containerenv.
    found: set[str] = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run", "/run/.containerenv"}
    for flag, value in itertools.pairwise(run_args):
        if flag in ("-v", "--volume"):
            dest = value.split(":")[1]
        elif flag == "--tmpfs":
            dest = value.split(":")[0]
        else:
            continue
        # /var/run is a symlink to /run in the image: the engine mounts (and creates) under /run.
        path = Path("/run") / Path(dest).relative_to("/var/run") if dest.startswith("/var/run/") else Path(dest)
        found |= {str(path), *(str(p) for p in path.parents if str(p) != "/")}
    return found


@dataclass
class Running:
    engine: Engine
    name: str
    run_args: Sequence[str] = ()

    def changed_files(self) -> list[str]:
        """What ``ENGINE diff`` says changed in the container's file system, mount points left out."""
        out = self.engine("diff", "--format", "json", self.name).stdout if self.engine.podman else ""
        if self.engine.podman:
            doc = json.loads(out or "{}")
            paths = [p for kind in ("changed", "added", "deleted") for p in doc.get(kind) or []]
        else:
            paths = [line.split(None, 1)[1] for line in self.engine("diff", self.name).stdout.splitlines()]
        return sorted(set(paths) - mount_points(self.run_args))

    def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.engine("exec", self.name, *argv, timeout=timeout, check=False)

    def port(self, container_port: int) -> int:
        out = self.engine("port", self.name, f"{container_port}/tcp").stdout.strip().splitlines()[0]
        host, _, port = out.rpartition(":")
        assert host in ("127.0.0.1", "0.0.0.0"), out
        return int(port)

    def url(self, container_port: int) -> str:
        return f"http://127.0.0.1:{self.port(container_port)}"

    def running(self) -> bool:
        out = self.engine("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return out.stdout.strip() == "true"

    def logs(self, tail: int = 60) -> str:
        out = self.engine("logs", "--tail", str(tail), self.name, check=False)
        return out.stdout + out.stderr

    def stop(self, grace_s: int) -> tuple[int, float]:
        """``stop`` with the pod's grace period; (exit code, seconds it took)."""
        start = time.monotonic()
        self.engine("stop", "-t", str(grace_s), self.name, timeout=grace_s + 60)
        took = time.monotonic() - start
        code = self.engine("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
        return int(code), took

    def wait_exec(self, argv: Sequence[str], timeout: float, interval: float = 2.0) -> list[int]:
        """Run ``argv`` in the container until it exits 0 (a kubelet's probe loop); every exit code seen."""
        return self._until_zero(lambda: self.exec(*argv, timeout=30).returncode, argv, timeout, interval)

    def wait_engine(self, args: Sequence[str], timeout: float, interval: float = 2.0) -> list[int]:
        """Run ``ENGINE args`` until it exits 0 (e.g. ``healthcheck run NAME``); every exit code seen."""
        return self._until_zero(
            lambda: self.engine(*args, timeout=60, check=False).returncode, args, timeout, interval
        )

    def _until_zero(self, once: Callable[[], int], what: Sequence[str], timeout: float, interval: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes: list[int] = []
        while True:
            assert self.running(), f"the container stopped while waiting for {list(what)}:\n{self.logs()}"
            codes.append(once())
            if codes[-1] == 0:
                return codes
            assert time.monotonic() < deadline, f"{list(what)} never passed in {timeout:.0f}s ({codes}):\n{self.logs()}"
            time.sleep(interval)


@contextmanager
def run_detached(engine: Engine, image: str, run_args: list[str], label: str) -> Iterator[Running]:
    """``ENGINE run -d`` the container; always removed afterwards."""
    name = f"graft-test-{label}-{uuid.uuid4().hex[:8]}"
    before, _, after = _split(run_args)
    try:
        engine("run", "-d", "--name", name, *before, image, *after, timeout=300)
        yield Running(engine, name, run_args)
    finally:
        engine("rm", "-f", "-t", "0", name, check=False, timeout=120)


def run_once(engine: Engine, image: str, run_args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``ENGINE run --rm`` to completion."""
    before, _, after = _split(run_args)
    name = f"graft-test-once-{uuid.uuid4().hex[:8]}"
    try:
        return engine("run", "--rm", "--name", name, *before, image, *after, timeout=timeout, check=False)
    finally:
        engine("rm", "-f", "-t", "0", name, check=False, timeout=120)


def _split(run_args: list[str]) -> tuple[list[str], str, list[str]]:
    if "--image--" not in run_args:
        return run_args, "", []
    i = run_args.index("--image--")
    return run_args[:i], "", run_args[i + 1 :]


def writable_folder(path: Path) -> Path:
    """A folder this machine lends a pod as a volume: writable by the pod's user (10001), like a PVC with fsGroup."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def image_config(engine: Engine, image: str) -> dict[str, Any]:
    inspected: list[dict[str, Any]] = json.loads(engine("image", "inspect", image).stdout)
    return inspected[0]


def is_root() -> bool:
    return os.geteuid() == 0
