"""The default :class:`admin.rollouts.base.Rollout`: a hot swap through TorchServe's management API.

Verified on TorchServe 0.12 (../shared/notes/torchserve-0.12.md): register the new version beside
the champion with ``synchronous=true`` (returns once its worker is up), send it real images by its
explicit version, ``set-default``, and only then unregister old versions. Requests to the
unversioned endpoint never see a gap: set-default is a pointer swap inside the frontend.
Every call goes through :class:`graft.torchserve.client.TorchServeClient` (keys, renewal, retry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from graft.core.capture import NO_CAPTURE_HEADER
from graft.core.errors import BadInputError, ConflictError, UpstreamError
from graft.torchserve.client import TorchServeClient, message_of

log = logging.getLogger(__name__)


def labels_in(body: Any) -> Iterator[str]:
    """Every ``label`` value anywhere in a prediction response (top-k lists, KServe envelopes...)."""
    if isinstance(body, dict):
        for k, v in body.items():
            if k == "label" and isinstance(v, str):
                yield v
            else:
                yield from labels_in(v)
    elif isinstance(body, list):
        for v in body:
            yield from labels_in(v)


class TorchServeRollout:
    """Deploys, swaps and retires model versions on one TorchServe through its management API."""

    # The value of X-Graft-No-Capture on smoke tests and replays: the key the workers honour (graft.core.capture).
    no_capture_key = "1"

    def __init__(
        self,
        management_url: str,
        inference_url: str,
        key_file: Path | None = None,
        timeout_s: float = 300.0,
        http: httpx.Client | None = None,
        drain_grace_s: float = 5.0,
        drain_timeout_s: float = 60.0,
    ):
        self.timeout_s = timeout_s
        self.drain_grace_s = drain_grace_s
        self.drain_timeout_s = drain_timeout_s
        # Registration with synchronous=true answers once the worker is up: the read timeout covers a model load.
        self.client = TorchServeClient(management_url, inference_url, key_file, timeout_s=timeout_s, http=http)

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        try:
            self.client.models()
            return True
        except UpstreamError:
            return False

    def versions(self, model_name: str) -> list[str]:
        return self.client.versions(model_name)

    def default_version(self, model_name: str) -> str | None:
        return self.client.default_version(model_name)

    def deploy(self, model_name: str, version: str, mar_path: Path) -> None:
        """Register ``version`` from the model store (not the default) and wait until a worker is READY."""
        if version in self.versions(model_name):
            log.info("TorchServe: %s version %s is already registered", model_name, version)
        else:
            try:
                # A file name: TorchServe resolves it inside its model store (allowed_urls stays narrow).
                self.client.register(Path(mar_path).name, model_name)
            except UpstreamError:
                self._cleanup(model_name, version)
                raise
            log.info("TorchServe: registered %s version %s", model_name, version)
        deadline = time.monotonic() + self.timeout_s
        while self.client.ready_workers(model_name, version) < 1:
            if time.monotonic() > deadline:
                self._cleanup(model_name, version)
                raise UpstreamError(
                    f"TorchServe: {model_name} version {version} has no READY worker after {self.timeout_s:.0f}s"
                )
            time.sleep(0.5)

    def _cleanup(self, model_name: str, version: str) -> None:
        """Best effort after a failed deploy; the champion is untouched either way."""
        try:
            if version in self.versions(model_name) and self.default_version(model_name) != version:
                self.client.unregister(model_name, version)
        except (UpstreamError, ConflictError) as e:
            log.warning("TorchServe: could not clean up %s version %s: %s", model_name, version, e)

    def set_default(self, model_name: str, version: str) -> None:
        self.client.set_default(model_name, version)
        log.info("TorchServe: %s version %s is now the default", model_name, version)

    def _drain(self, model_name: str, version: str) -> None:
        """Let requests already routed to ``version`` finish before it is unregistered.

        TorchServe 0.12 kills a version's workers on DELETE (and on a scale-down, whatever its
        ``timeout``) with requests still in them: measured here, those clients got "Worker died" or
        no answer at all. Once a version is not the default no new requests reach it (unless asked
        for by version), so: wait until its queue is empty, then one grace period for the batch
        that may still be running (the API does not show in-flight work).
        """
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline:
            pending = self.client.pending_requests(model_name, version)
            if pending is None:
                return
            if pending == 0:
                break
            time.sleep(0.1)
        time.sleep(self.drain_grace_s)

    def retire(self, model_name: str, version: str) -> None:
        if self.default_version(model_name) == version:
            raise ConflictError(f"TorchServe will not unregister {model_name} {version}: it is the default")
        self._drain(model_name, version)
        if self.client.unregister(model_name, version):
            log.info("TorchServe: unregistered %s version %s", model_name, version)

    def smoke_test(self, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str]) -> None:
        smoke_test(self.client, model_name, version, images, labels, self.no_capture_key)

    def predict(self, model_name: str, version: str, payload: bytes) -> list[tuple[str, float]]:
        return predict_top(self.client, model_name, version, payload, self.no_capture_key)


def predict_top(client: TorchServeClient, model_name: str, version: str, payload: bytes, no_capture: str = "1"
                ) -> list[tuple[str, float]]:  # fmt: skip
    """``version``'s top-k answer to one image, never captured (``no_capture``: the key the workers honour):
    [(label, score)], most probable first.

    BadInputError when the server refused the input (4xx), UpstreamError when it failed."""
    r = client.predict(model_name, payload, version=version, headers={NO_CAPTURE_HEADER: no_capture})
    if 400 <= r.status_code < 500:
        raise BadInputError(f"version {version} refused the input: {r.status_code} {message_of(r)}")
    if r.status_code != 200:
        raise UpstreamError(f"version {version} answered {r.status_code}: {message_of(r)}")
    try:
        predictions = r.json()["predictions"]
        return [(str(p["label"]), float(p["score"])) for p in predictions]
    except (ValueError, KeyError, TypeError) as e:
        raise UpstreamError(f"version {version} answered without a top-k list") from e


def smoke_test(
    client: TorchServeClient, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str],
    no_capture: str = "1",
) -> None:
    """Each image to ``/predictions/NAME/VERSION``: 200, JSON, and only labels the model has."""
    known = set(labels)
    for path in images:
        headers = {NO_CAPTURE_HEADER: no_capture}
        r = client.predict(model_name, Path(path).read_bytes(), version=version, headers=headers)
        if r.status_code != 200:
            raise UpstreamError(
                f"smoke test: {Path(path).name} got {r.status_code} from version {version}: {message_of(r)}"
            )
        try:
            body = r.json()
        except ValueError as e:
            raise UpstreamError(f"smoke test: version {version} answered {Path(path).name} with non-JSON") from e
        answered = body.get("model_version") if isinstance(body, dict) else None
        if answered is not None and str(answered) != version:
            raise UpstreamError(f"smoke test: asked version {version}, version {answered} answered")
        strange = set(labels_in(body)) - known
        if known and strange:
            raise UpstreamError(f"smoke test: version {version} answered with unknown label(s) {sorted(strange)}")
    log.info("smoke test: %s version %s answered %d real image(s)", model_name, version, len(images))
