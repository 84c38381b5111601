"""Promotion on Kubernetes: the shared model store plus a readiness-gated rolling update.

The inference pods mount the model-store PVC read-only and, at start, ``graft serve`` loads every
``NAME-VERSION.mar`` in it, with the version named in ``GRAFT_DEFAULT_VERSIONS`` (``name=version,...``)
as the default. So:

* ``deploy`` copies the ``.mar`` into the store, pins the current default explicitly (the new file
  must not become the default by being the latest) and restarts the pods one at a time so they load it;
* ``set_default`` changes the pin, which changes the pod template, which rolls the pods again;
* ``retire`` takes the file out of the store (never the default's); pods drop it on their next restart.

The Deployment's strategy is ``maxUnavailable: 0``, and a pod is ready only once every model has a
READY worker and its pinned default (admin/kube_probe.py), so old pods serve until new ones are
ready; when a rollout fails the previous template is patched back.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from admin.cluster import KubeConfig, api_error, load_api_client
from graft.core.errors import ArtifactError, ClusterError, ConflictError, NotFoundError, RolloutError, UserInputError
from graft.core.util import file_sha256
from graft.torchserve.client import TorchServeClient
from graft.torchserve.pins import DEFAULTS_ENV, format_defaults, parse_defaults
from graft.torchserve.store import version_key

log = logging.getLogger(__name__)

DEFAULTS_ANNOTATION = "graft.io/default-versions"
STORE_ANNOTATION = "graft.io/model-store"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,63}$")


def _check_names(model_name: str, version: str) -> None:
    if not _MODEL_RE.match(model_name) or not _VERSION_RE.match(version):
        raise UserInputError(
            f"model {model_name!r} / version {version!r}: names are letters, digits, '_' and '.' "
            "(and '-' in the model name), starting with a letter or digit"
        )


def _check_archive(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            if "MAR-INF/MANIFEST.json" not in z.namelist():
                raise ArtifactError(f"{str(path)!r} is not a model archive (no MAR-INF/MANIFEST.json)")
    except (OSError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"cannot read model archive {str(path)!r}: {e}") from e


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)


class KubernetesRollout:
    """Implements :class:`admin.rollouts.base.Rollout` by patching the inference Deployment's pod template."""

    no_capture_key = "1"  # the value of X-Graft-No-Capture the workers honour (admin/domain/service.py sets it)

    def __init__(
        self,
        api_client: Any,
        cfg: KubeConfig,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.apps = client.AppsV1Api(api_client)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_config(cls, cfg: KubeConfig | None = None, kubeconfig: str | None = None) -> KubernetesRollout:
        cfg = cfg or KubeConfig()
        return cls(load_api_client(kubeconfig), cfg)

    # ------------------------------------------------------------------ store

    def _mar(self, model_name: str, version: str) -> Path:
        return self.cfg.model_store_dir / f"{model_name}-{version}.mar"

    def versions(self, model_name: str) -> list[str]:
        prefix = f"{model_name}-"
        found = [
            p.name[len(prefix) : -len(".mar")]
            for p in self.cfg.model_store_dir.glob(f"{glob.escape(model_name)}-*.mar")
            if p.is_file()
        ]
        return sorted((v for v in found if _VERSION_RE.match(v)), key=version_key)

    def _store_revision(self) -> str:
        names = sorted(p.name for p in self.cfg.model_store_dir.glob("*.mar"))
        return "sha256:" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    def _install(self, src: Path, dest: Path) -> None:
        _check_archive(src)
        if dest.exists():
            if src.resolve() == dest.resolve() or _same_file(src, dest):
                return
            raise ConflictError(f"{dest.name} is already in the model store with different content")
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with src.open("rb") as fin, tmp.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"cannot write {dest} into the model store: {e}") from e
        log.info("copied %s into the model store as %s", src, dest.name)

    # ------------------------------------------------------------------ deployment

    def _read(self) -> client.V1Deployment:
        try:
            return self.apps.read_namespaced_deployment(
                self.cfg.inference_deployment, self.cfg.namespace, _request_timeout=self.cfg.request_timeout_s
            )
        except ApiException as e:
            raise api_error(f"read Deployment {self.cfg.inference_deployment}", e) from e

    def _template_state(self) -> tuple[dict[str, str], str]:
        """(default pins, store revision annotation) of the current pod template."""
        template = self._read().spec.template
        annotations = (template.metadata.annotations if template.metadata else None) or {}
        for container in template.spec.containers if template.spec else []:
            if container.name == self.cfg.inference_container:
                env = {e.name: e.value for e in container.env or []}
                return parse_defaults(env.get(DEFAULTS_ENV)), annotations.get(STORE_ANNOTATION, "")
        raise ClusterError(
            f"Deployment {self.cfg.inference_deployment} has no container {self.cfg.inference_container!r} "
            "(GRAFT_KUBE_INFERENCE_CONTAINER)"
        )

    def patch_body(self, pins: dict[str, str], store_revision: str) -> dict[str, Any]:
        """Strategic-merge patch: containers and env merge by name, so nothing else in the template changes."""
        value = format_defaults(pins)
        return {
            "spec": {
                "template": {
                    "metadata": {"annotations": {DEFAULTS_ANNOTATION: value, STORE_ANNOTATION: store_revision}},
                    "spec": {
                        "containers": [
                            {"name": self.cfg.inference_container, "env": [{"name": DEFAULTS_ENV, "value": value}]}
                        ]
                    },
                }
            }
        }

    def _patch(self, pins: dict[str, str], store_revision: str) -> int:
        try:
            dep = self.apps.patch_namespaced_deployment(
                self.cfg.inference_deployment,
                self.cfg.namespace,
                self.patch_body(pins, store_revision),
                _content_type=STRATEGIC_MERGE,
                _request_timeout=self.cfg.request_timeout_s,
            )
        except ApiException as e:
            raise api_error(f"patch Deployment {self.cfg.inference_deployment}", e) from e
        return int(dep.metadata.generation or 0) if dep.metadata else 0

    def _wait(self, generation: int) -> None:
        """Until every replica runs the new template and is available (``kubectl rollout status``'s rule)."""
        deadline = self._clock() + self.cfg.rollout_timeout_s
        while True:
            dep = self._read()
            st, want = dep.status, dep.spec.replicas if dep.spec.replicas is not None else 1
            if st is not None and (st.observed_generation or 0) >= generation:
                for cond in st.conditions or []:
                    if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                        raise RolloutError(f"rollout of {self.cfg.inference_deployment} stalled: {cond.message}")
                updated, total, available = st.updated_replicas or 0, st.replicas or 0, st.available_replicas or 0
                if updated >= want and total <= updated and available >= updated:
                    return
            if self._clock() >= deadline:
                raise RolloutError(
                    f"rollout of {self.cfg.inference_deployment} not finished after {self.cfg.rollout_timeout_s:.0f}s"
                )
            self._sleep(self.cfg.poll_interval_s)

    def _roll(self, pins: dict[str, str], previous: tuple[dict[str, str], str], what: str) -> None:
        """Patch and wait; on failure patch the previous template back so its pods keep serving."""
        try:
            self._wait(self._patch(pins, self._store_revision()))
        except RolloutError:
            log.error("%s failed; restoring the previous pod template", what)
            try:
                self._patch(*previous)
            except ClusterError as e:
                log.error("could not restore the previous pod template: %s", e)
            raise
        log.info("%s: rollout of %s complete", what, self.cfg.inference_deployment)

    # ------------------------------------------------------------------ Rollout protocol

    def deploy(self, model_name: str, version: str, mar_path: Path) -> None:
        _check_names(model_name, version)
        previous = self._template_state()
        pins = dict(previous[0])
        dest = self._mar(model_name, version)
        self._install(Path(mar_path), dest)
        if model_name not in pins:
            # Today's default is the latest version other than this one (graft serve's rule): pin it.
            pins[model_name] = self._latest(model_name, exclude=version) or version
        try:
            self._roll(pins, previous, f"deploy {model_name} {version}")
        except RolloutError:
            if pins.get(model_name) != version:
                dest.unlink(missing_ok=True)
            raise

    def set_default(self, model_name: str, version: str) -> None:
        _check_names(model_name, version)
        if version not in self.versions(model_name):
            raise NotFoundError(f"{model_name} version {version} is not in the model store; deploy it first")
        previous = self._template_state()
        pins = {**previous[0], model_name: version}
        self._roll(pins, previous, f"set default {model_name}={version}")

    def default_version(self, model_name: str) -> str | None:
        """The pinned default, else the latest version in the store (``graft serve``'s rule), else None."""
        pins, _ = self._template_state()
        return pins.get(model_name) or self._latest(model_name)

    def _latest(self, model_name: str, exclude: str | None = None) -> str | None:
        known = [v for v in self.versions(model_name) if v != exclude]
        return max(known, key=version_key) if known else None

    def smoke_test(self, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str]) -> None:
        """Real images to ``/predictions/NAME/VERSION`` through the inference Service (every pod has it now)."""
        from admin.rollouts.torchserve import smoke_test

        # Management is never called here; TorchServe runs without tokens on Kubernetes.
        with TorchServeClient(self.cfg.inference_url, self.cfg.inference_url, None) as ts:
            smoke_test(ts, model_name, version, images, labels, self.no_capture_key)

    def predict(self, model_name: str, version: str, payload: bytes) -> list[tuple[str, float]]:
        from admin.rollouts.torchserve import predict_top

        with TorchServeClient(self.cfg.inference_url, self.cfg.inference_url, None) as ts:
            return predict_top(ts, model_name, version, payload, self.no_capture_key)

    def retire(self, model_name: str, version: str) -> None:
        _check_names(model_name, version)
        if version == self.default_version(model_name):
            raise ConflictError(f"{model_name} version {version} is the default; set another default first")
        self._mar(model_name, version).unlink(missing_ok=True)
        log.info("retired %s version %s from the model store", model_name, version)


def build_rollout(settings: Any, kubeconfig: str | None = None) -> KubernetesRollout:
    """The rollout for ``GRAFT_ROLLOUT=kubernetes``: the admin's model store is the shared PVC."""
    update: dict[str, Any] = {}
    if getattr(settings, "model_store", None) is not None:
        update["model_store_dir"] = Path(settings.model_store)
    if getattr(settings, "torchserve_inference_url", None):
        update["inference_url"] = str(settings.torchserve_inference_url)
    return KubernetesRollout.from_config(KubeConfig().model_copy(update=update), kubeconfig)
