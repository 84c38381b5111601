"""The one TorchServe client: keys, renewal and retry, the management calls graft makes, predictions.

Used by the launcher (readiness, defaults), the admin's rollout (register, swap, retire, smoke test),
the Kubernetes probes and the benchmarks. Facts it relies on (../shared/notes/torchserve-0.12.md):

* with token authorization on, TorchServe writes ``key_file.json`` in its working folder; the management
  and inference keys expire (60 minutes by default) and the API key renews them (``GET /token?type=...``
  on the management port), which rewrites the file;
* a missing, wrong or expired key is answered **400** ``InvalidKeyException``, not 401;
* ``/ping`` says "Healthy" before any worker is up: readiness means a worker in state ``READY``.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx

from graft.core.errors import ConflictError, UpstreamError

log = logging.getLogger(__name__)

KEY_FILE = "key_file.json"
KeyKind = Literal["management", "inference"]
# Renew a key this long before TorchServe says it expires, so no request is sent with a dying key.
_RENEW_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class TokenKeys:
    inference: str
    management: str
    api: str


def parse_expiry(text: str) -> datetime | None:
    """TorchServe writes nanoseconds (``...40.878181916Z``); Python reads at most microseconds."""
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        stamp = f"{head}.{(frac + '000000')[:6]}" if frac else head
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    except ValueError:
        return None


def load_keys(key_file: Path) -> TokenKeys:
    """The three keys of a ``key_file.json``; :class:`UpstreamError` when it is missing or malformed."""
    try:
        doc = json.loads(Path(key_file).read_text())
        return TokenKeys(doc["inference"]["key"], doc["management"]["key"], doc["API"]["key"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UpstreamError(f"cannot read TorchServe keys from {key_file}: {e!r}") from e


def message_of(r: httpx.Response) -> str:
    """TorchServe's error message (its JSON ``message``), else the start of the body."""
    try:
        return str(r.json().get("message", r.text))[:500]
    except (ValueError, AttributeError):
        return r.text[:500]


class KeyRing:
    """The keys in ``key_file.json``; ``key_file`` None means TorchServe runs without tokens."""

    def __init__(self, key_file: Path | None, management_url: str, http: httpx.Client):
        self.key_file = Path(key_file) if key_file is not None else None
        self.management_url = management_url.rstrip("/")
        self.http = http
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.key_file is not None

    def _doc(self) -> dict[str, Any]:
        assert self.key_file is not None
        try:
            doc: dict[str, Any] = json.loads(self.key_file.read_text())
            return doc
        except (OSError, ValueError) as e:
            raise UpstreamError(f"cannot read TorchServe's key file {self.key_file}: {e}") from e

    def read(self) -> TokenKeys | None:
        return None if self.key_file is None else load_keys(self.key_file)

    def get(self, kind: KeyKind) -> str | None:
        """The current key of ``kind``, renewed first when it is about to expire."""
        if self.key_file is None:
            return None
        with self._lock:
            entry = self._doc().get(kind) or {}
            expiry = parse_expiry(str(entry.get("expiration time", "")))
            if expiry is not None and expiry - _RENEW_MARGIN < datetime.now(UTC):
                self._renew(kind)
                entry = self._doc().get(kind) or {}
            return str(entry.get("key", "")) or None

    def rejected(self, kind: KeyKind, used: str | None) -> None:
        """A request was refused with ``used``: renew unless someone else already has (new key on file)."""
        if self.key_file is None:
            return
        with self._lock:
            if str((self._doc().get(kind) or {}).get("key", "")) == (used or ""):
                self._renew(kind)

    def renew(self, kind: KeyKind) -> None:
        with self._lock:
            self._renew(kind)

    def _renew(self, kind: KeyKind) -> None:
        api_key = str((self._doc().get("API") or {}).get("key", ""))
        try:
            r = self.http.get(
                f"{self.management_url}/token", params={"type": kind}, headers={"Authorization": f"Bearer {api_key}"}
            )
        except httpx.HTTPError as e:
            raise UpstreamError(f"cannot renew TorchServe's {kind} key: {e}") from e
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe refused to renew the {kind} key ({r.status_code}): {r.text[:300]}")
        log.info("renewed TorchServe's %s key", kind)


def _is_key_refusal(r: httpx.Response) -> bool:
    return r.status_code == 400 and "InvalidKeyException" in r.text


class TorchServeClient:
    """One TorchServe's inference and management APIs, with its keys handled."""

    def __init__(
        self,
        management_url: str,
        inference_url: str,
        key_file: Path | None = None,
        timeout_s: float = 60.0,
        http: httpx.Client | None = None,
    ):
        self.management_url = management_url.rstrip("/")
        self.inference_url = inference_url.rstrip("/")
        self._own_http = http is None
        self.http = http or httpx.Client(timeout=httpx.Timeout(10.0, read=timeout_s))
        self.keys = KeyRing(key_file, self.management_url, self.http)

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def headers(self, kind: KeyKind = "inference") -> dict[str, str]:
        """``Authorization`` for the inference or management API (empty with tokens off)."""
        key = self.keys.get(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, kind: KeyKind, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with the current key; a refused key is renewed and the call sent once more."""
        base = self.management_url if kind == "management" else self.inference_url
        extra = dict(kwargs.pop("headers", None) or {})
        r: httpx.Response | None = None
        for attempt in (1, 2):
            key = self.keys.get(kind)
            headers = {**extra, **({"Authorization": f"Bearer {key}"} if key else {})}
            try:
                r = self.http.request(method, f"{base}{path}", headers=headers, **kwargs)
            except httpx.HTTPError as e:
                raise UpstreamError(f"TorchServe did not answer {method} {base}{path}: {e!r}") from e
            if attempt == 1 and self.keys.enabled and _is_key_refusal(r):
                self.keys.rejected(kind, key)
                continue
            return r
        assert r is not None
        return r

    def management(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("management", method, path, **kwargs)

    def inference(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("inference", method, path, **kwargs)

    # ------------------------------------------------------------------ reading
    def ping(self) -> int:
        """``/ping``'s status code (200 = the frontend is up; models may still be loading)."""
        return self.inference("GET", "/ping").status_code

    def models(self) -> list[str]:
        r = self.management("GET", "/models", params={"limit": 1000})
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe: listing models failed ({r.status_code}): {message_of(r)}")
        return [str(m["modelName"]) for m in r.json().get("models", [])]

    def describe(self, name: str, version: str | None = None) -> list[dict[str, Any]] | None:
        """``GET /models/NAME[/VERSION]``: the default version without ``version``, every one with ``all``.

        None when TorchServe does not know the model (or that version).
        """
        path = f"/models/{name}" + (f"/{version}" if version else "")
        r = self.management("GET", path)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            what = f"{name} {version or ''}".strip()
            raise UpstreamError(f"TorchServe: describing {what} failed ({r.status_code}): {message_of(r)}")
        body = r.json()
        return body if isinstance(body, list) else []

    def versions(self, name: str) -> list[str]:
        return [str(m["modelVersion"]) for m in self.describe(name, "all") or []]

    def default_version(self, name: str) -> str | None:
        described = self.describe(name)
        return str(described[0]["modelVersion"]) if described else None

    def ready_workers(self, name: str, version: str) -> int:
        """Workers of ``version`` in state READY (0 when the version is unknown)."""
        return sum(ready_workers(v) for v in self.describe(name, version) or [])

    def ready_versions(self) -> set[tuple[str, str]]:
        """(model, version) pairs with at least one READY worker."""
        ready = set()
        for name in self.models():
            for v in self.describe(name, "all") or []:
                if ready_workers(v):
                    ready.add((str(v["modelName"]), str(v["modelVersion"])))
        return ready

    def pending_requests(self, name: str, version: str) -> int | None:
        """Requests queued for ``version``; None when it is gone."""
        described = self.describe(name, version)
        if not described:
            return None
        return int((described[0].get("jobQueueStatus") or {}).get("pendingRequests", 0))

    # ------------------------------------------------------------------ changing
    def register(self, mar_name: str, name: str, initial_workers: int = 1, synchronous: bool = True) -> None:
        """Register an archive of the model store by file name (TorchServe resolves it inside the store)."""
        params = {"url": mar_name, "model_name": name, "initial_workers": initial_workers,
                  "synchronous": "true" if synchronous else "false"}  # fmt: skip
        r = self.management("POST", "/models", params=params)
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe refused {mar_name} ({r.status_code}): {message_of(r)}")

    def set_default(self, name: str, version: str) -> None:
        r = self.management("PUT", f"/models/{name}/{version}/set-default")
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe: set-default {name} {version} failed ({r.status_code}): {message_of(r)}")

    def unregister(self, name: str, version: str) -> bool:
        """Unregister ``version``; False when it was already gone. The default cannot be unregistered."""
        r = self.management("DELETE", f"/models/{name}/{version}")
        if r.status_code == 404:
            return False
        if r.status_code == 403:
            raise ConflictError(f"TorchServe will not unregister {name} {version}: it is the default")
        if r.status_code != 200:
            raise UpstreamError(f"TorchServe: unregistering {name} {version} failed ({r.status_code}): {message_of(r)}")
        return True

    def predict(
        self, name: str, body: bytes, version: str | None = None, content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:  # fmt: skip
        """POST an image (or JSON) to ``/predictions/NAME[/VERSION]``.

        Never a form content type: the frontend would decode the bytes as form fields (see the notes).
        """
        path = f"/predictions/{name}" + (f"/{version}" if version else "")
        return self.inference("POST", path, content=body, headers={**(headers or {}), "Content-Type": content_type})


def ready_workers(described: dict[str, Any]) -> int:
    """READY workers in one entry of ``GET /models/NAME/...``."""
    return sum(1 for w in described.get("workers") or [] if isinstance(w, dict) and w.get("status") == "READY")
