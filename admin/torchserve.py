"""The default :class:`admin.ports.Rollout`: a hot swap through TorchServe's management API.

Verified on TorchServe 0.12 (../shared/notes/torchserve-0.12.md): register the new version beside
the champion with ``synchronous=true`` (returns once its worker is up), send it real images by its
explicit version, ``set-default``, and only then unregister old versions. Requests to the
unversioned endpoint never see a gap: set-default is a pointer swap inside the frontend.

Tokens come from TorchServe's ``key_file.json``; management and inference keys expire (60 minutes
by default), so a rejected or expired key is re-read from the file and, failing that, renewed with
the API key (``GET /token?type=...``), which rewrites the file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx

from graft.errors import ConflictError, UpstreamError

log = logging.getLogger(__name__)

KeyKind = Literal["management", "inference"]
_RENEW_MARGIN = timedelta(seconds=60)


def _parse_expiry(text: str) -> datetime | None:
    """TorchServe writes nanoseconds (``...40.878181916Z``); Python reads at most microseconds."""
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        stamp = f"{head}.{(frac + '000000')[:6]}" if frac else head
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    except ValueError:
        return None


class TorchServeKeys:
    """The current management/inference keys; None everywhere when TorchServe runs without tokens."""

    def __init__(self, key_file: Path | None, management_url: str, client: httpx.Client):
        self.key_file = Path(key_file) if key_file is not None else None
        self.management_url = management_url.rstrip("/")
        self.client = client
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        assert self.key_file is not None
        try:
            data: dict[str, Any] = json.loads(self.key_file.read_text())
            return data
        except (OSError, ValueError) as e:
            raise UpstreamError(f"cannot read TorchServe's key file {self.key_file}: {e}") from e

    def get(self, kind: KeyKind) -> str | None:
        if self.key_file is None:
            return None
        with self._lock:
            entry = self._read().get(kind) or {}
            expiry = _parse_expiry(str(entry.get("expiration time", "")))
            if expiry is not None and expiry - _RENEW_MARGIN < datetime.now(UTC):
                self._renew(kind)
                entry = self._read().get(kind) or {}
            return str(entry.get("key", "")) or None

    def rejected(self, kind: KeyKind, used: str | None) -> None:
        """A request was refused with ``used``: renew unless someone else already has (new key on file)."""
        if self.key_file is None:
            return
        with self._lock:
            if str((self._read().get(kind) or {}).get("key", "")) == (used or ""):
                self._renew(kind)

    def _renew(self, kind: KeyKind) -> None:
        api_key = str((self._read().get("API") or {}).get("key", ""))
        try:
            r = self.client.get(
                f"{self.management_url}/token", params={"type": kind}, headers={"Authorization": f"Bearer {api_key}"}
            )
        except httpx.HTTPError as e:
            raise UpstreamError(f"cannot renew TorchServe's {kind} key: {e}") from e
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe refused to renew the {kind} key ({r.status_code}): {r.text[:300]}")
        log.info("renewed TorchServe's %s key", kind)


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", r.text))[:500]
    except ValueError:
        return r.text[:500]


def _labels_in(body: Any) -> Iterator[str]:
    """Every ``label`` value anywhere in a prediction response (top-k lists, KServe envelopes...)."""
    if isinstance(body, dict):
        for k, v in body.items():
            if k == "label" and isinstance(v, str):
                yield v
            else:
                yield from _labels_in(v)
    elif isinstance(body, list):
        for v in body:
            yield from _labels_in(v)


class TorchServeRollout:
    """Deploys, swaps and retires model versions on one TorchServe through its management API."""

    def __init__(
        self,
        management_url: str,
        inference_url: str,
        key_file: Path | None = None,
        timeout_s: float = 300.0,
        client: httpx.Client | None = None,
        drain_grace_s: float = 5.0,
        drain_timeout_s: float = 60.0,
    ):
        self.management_url = management_url.rstrip("/")
        self.inference_url = inference_url.rstrip("/")
        self.timeout_s = timeout_s
        self.drain_grace_s = drain_grace_s
        self.drain_timeout_s = drain_timeout_s
        self.client = client or httpx.Client(timeout=httpx.Timeout(30.0, read=timeout_s))
        self.keys = TorchServeKeys(key_file, self.management_url, self.client)

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, url: str, kind: KeyKind, **kwargs: Any) -> httpx.Response:
        """One request with the current key; a refused key is renewed and the request sent once more."""
        for attempt in (1, 2):
            key = self.keys.get(kind)
            headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {key}"} if key else {})}
            try:
                r = self.client.request(method, url, headers=headers, **kwargs)
            except httpx.HTTPError as e:
                raise UpstreamError(f"TorchServe did not answer {method} {url}: {e!r}") from e
            # TorchServe answers a bad or expired token with 400 InvalidKeyException, not 401.
            if r.status_code == 400 and "InvalidKeyException" in r.text and attempt == 1:
                self.keys.rejected(kind, key)
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            return r
        return r

    def _mgmt(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._call(method, f"{self.management_url}{path}", "management", **kwargs)

    def ping(self) -> bool:
        try:
            return self._mgmt("GET", "/models").status_code == 200
        except UpstreamError:
            return False

    def versions(self, model_name: str) -> list[str]:
        r = self._mgmt("GET", f"/models/{model_name}/all")
        if r.status_code == 404:
            return []
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe: listing versions of {model_name} failed ({r.status_code}): {_message(r)}")
        return [str(m["modelVersion"]) for m in r.json()]

    def default_version(self, model_name: str) -> str | None:
        r = self._mgmt("GET", f"/models/{model_name}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe: describing {model_name} failed ({r.status_code}): {_message(r)}")
        return str(r.json()[0]["modelVersion"])

    def _ready_workers(self, model_name: str, version: str) -> int:
        r = self._mgmt("GET", f"/models/{model_name}/{version}")
        if r.status_code != 200:
            return 0
        return sum(1 for w in r.json()[0].get("workers", []) if w.get("status") == "READY")

    def deploy(self, model_name: str, version: str, mar_path: Path) -> None:
        """Register ``version`` from the model store (not the default) and wait until a worker is READY."""
        if version in self.versions(model_name):
            log.info("TorchServe: %s version %s is already registered", model_name, version)
        else:
            # url is a file name: TorchServe resolves it inside its model store (allowed_urls stays narrow).
            params = {"url": Path(mar_path).name, "model_name": model_name, "initial_workers": 1, "synchronous": "true"}
            r = self._mgmt("POST", "/models", params=params)
            if r.status_code != 200:
                self._cleanup(model_name, version)
                raise UpstreamError(f"TorchServe refused {Path(mar_path).name} ({r.status_code}): {_message(r)}")
            log.info("TorchServe: registered %s version %s", model_name, version)
        deadline = time.monotonic() + self.timeout_s
        while self._ready_workers(model_name, version) < 1:
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
                self._mgmt("DELETE", f"/models/{model_name}/{version}")
        except UpstreamError as e:
            log.warning("TorchServe: could not clean up %s version %s: %s", model_name, version, e)

    def set_default(self, model_name: str, version: str) -> None:
        r = self._mgmt("PUT", f"/models/{model_name}/{version}/set-default")
        if r.status_code != 200:
            raise UpstreamError(
                f"TorchServe: set-default {model_name} {version} failed ({r.status_code}): {_message(r)}"
            )
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
            r = self._mgmt("GET", f"/models/{model_name}/{version}")
            if r.status_code != 200:
                return
            if int(r.json()[0].get("jobQueueStatus", {}).get("pendingRequests", 0)) == 0:
                break
            time.sleep(0.1)
        time.sleep(self.drain_grace_s)

    def retire(self, model_name: str, version: str) -> None:
        if self.default_version(model_name) == version:
            raise ConflictError(f"TorchServe will not unregister {model_name} {version}: it is the default")
        self._drain(model_name, version)
        r = self._mgmt("DELETE", f"/models/{model_name}/{version}")
        if r.status_code == 404:
            return  # already gone: retiring is idempotent
        if r.status_code == 403:
            raise ConflictError(f"TorchServe will not unregister {model_name} {version}: it is the default")
        if r.status_code != 200:
            raise UpstreamError(
                f"TorchServe: unregistering {model_name} {version} failed ({r.status_code}): {_message(r)}"
            )
        log.info("TorchServe: unregistered %s version %s", model_name, version)

    def smoke_test(self, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str]) -> None:
        """Each image to ``/predictions/NAME/VERSION``: 200, JSON, and only labels the model has."""
        known = set(labels)
        for path in images:
            r = self._call(
                "POST",
                f"{self.inference_url}/predictions/{model_name}/{version}",
                "inference",
                content=Path(path).read_bytes(),
                # A form content type would make the frontend mangle the bytes (see the notes).
                headers={"Content-Type": "application/octet-stream"},
            )
            if r.status_code != 200:
                raise UpstreamError(
                    f"smoke test: {Path(path).name} got {r.status_code} from version {version}: {_message(r)}"
                )
            try:
                body = r.json()
            except ValueError as e:
                raise UpstreamError(f"smoke test: version {version} answered {Path(path).name} with non-JSON") from e
            answered = body.get("model_version") if isinstance(body, dict) else None
            if answered is not None and str(answered) != version:
                raise UpstreamError(f"smoke test: asked version {version}, version {answered} answered")
            strange = set(_labels_in(body)) - known
            if known and strange:
                raise UpstreamError(f"smoke test: version {version} answered with unknown label(s) {sorted(strange)}")
        log.info("smoke test: %s version %s answered %d real image(s)", model_name, version, len(images))
