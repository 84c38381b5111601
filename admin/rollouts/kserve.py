"""A :class:`admin.rollouts.base.Rollout` for graft's KServe runtime (``graft serve --runtime kserve``).

Versions are separate KServe models (``NAME-vVERSION``) and ``NAME`` follows the default (see
graft/kserve/versions.py and docs/kserve.md). The admin drives the runtime's management routes
(``/graft/v1/...``, management key), smoke-tests and replays through KServe v1 on the version's own
model name with the no-capture header, exactly as it does through TorchServe's versioned URL.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from admin.rollouts.torchserve import labels_in
from graft.core.capture import NO_CAPTURE_HEADER
from graft.core.errors import BadInputError, ConflictError, UpstreamError

log = logging.getLogger(__name__)


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body.get("error") or body)[:300]
    return str(body)[:300]


def _keys(key_file: Path | None) -> tuple[str | None, str | None]:
    if key_file is None:
        return None, None
    try:
        doc = json.loads(Path(key_file).read_text())
        return str(doc["inference"]["key"]), str(doc["management"]["key"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UpstreamError(f"cannot read the KServe runtime's keys from {key_file}: {e!r}") from e


class KServeRollout:
    """Loads, promotes and retires versions on one graft KServe runtime over HTTP."""

    no_capture_key = "1"

    def __init__(self, url: str, key_file: Path | None = None, timeout_s: float = 300.0,
                 http: httpx.Client | None = None, drain_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.key_file = key_file
        # Loading a version answers once it is warm: the read timeout covers a model load.
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))
        self.drain_timeout_s = drain_timeout_s

    def close(self) -> None:
        self.http.close()

    def _headers(self, management: bool) -> dict[str, str]:
        inference, mgmt = _keys(self.key_file)  # read per call: the runtime may make a new file on restart
        key = mgmt if management else inference
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _call(self, method: str, path: str, management: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers(management), **kwargs.pop("headers", {})}
        try:
            return self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        except httpx.HTTPError as e:
            raise UpstreamError(f"KServe runtime at {self.url} did not answer {method} {path}: {e!r}") from e

    def _manage(self, method: str, path: str) -> dict[str, Any]:
        r = self._call(method, f"/graft/v1{path}")
        if r.status_code == 409:
            raise ConflictError(f"KServe runtime: {_message(r)}")
        if r.status_code >= 300:
            raise UpstreamError(f"KServe runtime answered {method} {path} with {r.status_code}: {_message(r)}")
        body: dict[str, Any] = r.json()
        return body

    def ping(self) -> bool:
        try:
            return self._call("GET", "/v2/health/ready", management=False).status_code == 200
        except UpstreamError:
            return False

    def _describe(self, model_name: str) -> dict[str, Any]:
        r = self._call("GET", f"/graft/v1/models/{model_name}")
        if r.status_code == 404:
            return {"default": None, "versions": []}
        if r.status_code != 200:
            raise UpstreamError(f"KServe runtime: {model_name}: {r.status_code} {_message(r)}")
        body: dict[str, Any] = r.json()
        return body

    def versions(self, model_name: str) -> list[str]:
        return [str(v) for v in self._describe(model_name).get("versions") or []]

    def default_version(self, model_name: str) -> str | None:
        default = self._describe(model_name).get("default")
        return None if default is None else str(default)

    def deploy(self, model_name: str, version: str, mar_path: Path) -> None:
        """Load ``version`` from the runtime's model store (it reads the same store); returns once it is warm."""
        self._manage("POST", f"/models/{model_name}/versions/{version}")
        log.info("KServe: %s version %s loaded (%s)", model_name, version, Path(mar_path).name)

    def set_default(self, model_name: str, version: str) -> None:
        self._manage("PUT", f"/models/{model_name}/default/{version}")
        log.info("KServe: %s version %s is now the default", model_name, version)

    def retire(self, model_name: str, version: str) -> None:
        if self.default_version(model_name) == version:
            raise ConflictError(f"KServe runtime will not unload {model_name} {version}: it is the default")
        self._manage("DELETE", f"/models/{model_name}/versions/{version}")
        log.info("KServe: unloaded %s version %s", model_name, version)

    def _predict(self, model_name: str, version: str, payload: bytes) -> httpx.Response:
        body = {"data": base64.b64encode(payload).decode()}
        return self._call("POST", f"/v1/models/{model_name}-v{version}:predict", management=False, json=body,
                          headers={NO_CAPTURE_HEADER: self.no_capture_key})  # fmt: skip

    def predict(self, model_name: str, version: str, payload: bytes) -> list[tuple[str, float]]:
        r = self._predict(model_name, version, payload)
        if 400 <= r.status_code < 500:
            raise BadInputError(f"version {version} refused the input: {r.status_code} {_message(r)}")
        if r.status_code != 200:
            raise UpstreamError(f"version {version} answered {r.status_code}: {_message(r)}")
        try:
            return [(str(p["label"]), float(p["score"])) for p in r.json()["predictions"]]
        except (ValueError, KeyError, TypeError) as e:
            raise UpstreamError(f"version {version} answered without a top-k list") from e

    def smoke_test(self, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str]) -> None:
        known = set(labels)
        for path in images:
            r = self._predict(model_name, version, Path(path).read_bytes())
            if r.status_code != 200:
                raise UpstreamError(f"smoke test: {Path(path).name} got {r.status_code} from version {version}: "
                                    f"{_message(r)}")  # fmt: skip
            try:
                body = r.json()
            except ValueError as e:
                raise UpstreamError(f"smoke test: version {version} answered {Path(path).name} with non-JSON") from e
            answered = body.get("model_version") if isinstance(body, dict) else None
            if answered is not None and str(answered) != version:
                raise UpstreamError(f"smoke test: asked version {version}, version {answered} answered")
            if known and (strange := set(labels_in(body)) - known):
                raise UpstreamError(f"smoke test: version {version} answered with unknown label(s) {sorted(strange)}")
        log.info("smoke test: %s version %s answered %d real image(s) on KServe", model_name, version, len(images))
