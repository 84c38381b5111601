"""``Client``: the admin API over HTTP (httpx, synchronous).

    from graft.client import Client

    with Client() as c:                              # GRAFT_URL / GRAFT_TOKEN, else runs/admin's files
        c.upload_folder("photos/")                   # photos/<label>/*.jpg
        job = c.retrain().wait(on_progress=print)
        print(job.status, job.reason)

Every error answer raises the typed exception of graft/client/errors.py.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from graft.client.config import Endpoint, read_endpoints, resolve
from graft.client.errors import ApiError, ServiceUnreachableError, check
from graft.client.folders import BATCH_BYTES, BATCH_FILES, Item, UploadReport, batches, collect
from graft.client.jobs import Job

ProgressFn = Callable[[int, int], None]  # (files done, files in all)
DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class Client:
    """The admin API. ``url``/``token`` default to ``GRAFT_URL``/``GRAFT_TOKEN``, then to what ``graft
    serve`` left in ``state_dir`` (``GRAFT_STATE_DIR``, default ``runs/admin``): see graft/client/config.py."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        state_dir: str | Path | None = None,
        token_file: str | Path | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.endpoint: Endpoint = resolve(url, token, state_dir, token_file)
        headers = {"Authorization": f"Bearer {self.endpoint.token}"} if self.endpoint.token else {}
        self.http = httpx.Client(base_url=self.endpoint.url, headers=headers, timeout=timeout, transport=transport)

    @property
    def url(self) -> str:
        return self.endpoint.url

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return check(self.http.request(method, path, **kwargs))
        except httpx.TransportError as e:
            raise ServiceUnreachableError(
                f"no admin answers at {self.url} ({type(e).__name__}): start it with `graft serve`, or point "
                "GRAFT_URL / --url at it"
            ) from e

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ service
    def ready(self) -> dict[str, Any]:
        """``/readyz``'s body, ready or not (``status`` says which; ``detail`` says why not)."""
        try:
            r = self.http.get("/readyz")
        except httpx.TransportError as e:
            raise ServiceUnreachableError(f"no admin answers at {self.url} ({type(e).__name__})") from e
        if r.status_code not in (200, 503):
            check(r)
        body: dict[str, Any] = r.json()
        return body

    # ------------------------------------------------------------------ samples
    def upload(self, image: str | Path | bytes, label: str, *, filename: str | None = None,
               new_label: bool = False) -> dict[str, Any]:  # fmt: skip
        """Store one labelled image; the sample (``id``, ``split``, ``duplicate``, ``split_reason``)."""
        if isinstance(image, bytes):
            name, data, ctype = filename or "image", image, "application/octet-stream"
        else:
            path = Path(image)
            name, data, ctype = filename or path.name, path.read_bytes(), _content_type(path)
        form = {"label": label, "new_label": "true" if new_label else "false"}
        body: dict[str, Any] = self._json("POST", "/v1/samples", files={"file": (name, data, ctype)}, data=form)
        return body

    def upload_batch(self, files: Sequence[str | Path], label: str, *, new_label: bool = False) -> dict[str, Any]:
        """Store many images of one label in one request: all of them or none (``items``, ``created``,
        ``duplicates``)."""
        parts = [("file", (Path(f).name, Path(f).read_bytes(), _content_type(Path(f)))) for f in files]
        form = {"label": label, "new_label": "true" if new_label else "false"}
        body: dict[str, Any] = self._json("POST", "/v1/samples/batch", files=parts, data=form)
        return body

    def upload_folder(
        self, folder: str | Path, label: str | None = None, *, progress: ProgressFn | None = None,
        new_label: bool = False, batch_files: int = BATCH_FILES, batch_bytes: int = BATCH_BYTES,
    ) -> UploadReport:  # fmt: skip
        """A folder of ``<label>/`` subfolders (or, with ``label``, a folder of one label), in batches.

        A batch the admin refuses (one unreadable image refuses them all) is sent again file by file, so the
        report names each refused file with the server's reason and the rest are stored."""
        report = UploadReport()
        items = collect(Path(folder), label, report.skipped)
        done = 0
        if progress is not None:
            progress(0, len(items))
        for batch in batches(items, batch_files, batch_bytes):
            try:
                body = self.upload_batch([i.path for i in batch], batch[0].label, new_label=new_label)
                for item, sample in zip(batch, body["items"], strict=True):
                    report.add(item.label, sample)
            except ApiError as e:
                if e.status in (401, 403, 429) or e.status >= 500:
                    raise
                self._one_by_one(batch, report, new_label)
            done += len(batch)
            if progress is not None:
                progress(done, len(items))
        return report

    def _one_by_one(self, batch: list[Item], report: UploadReport, new_label: bool) -> None:
        for item in batch:
            try:
                report.add(item.label, self.upload(item.path, item.label, new_label=new_label))
            except ApiError as e:
                if e.status in (401, 403, 429) or e.status >= 500:
                    raise
                report.refused.append((str(item.path), e.message))

    def stats(self) -> dict[str, Any]:
        """Samples per label and split, and how many arrived since the model in service."""
        body: dict[str, Any] = self._json("GET", "/v1/samples/stats")
        return body

    def samples(self, offset: int = 0, limit: int = 100, **filters: str) -> list[dict[str, Any]]:
        body = self._json("GET", "/v1/samples", params={"offset": offset, "limit": limit, **filters})
        return list(body["samples"])

    def relabel(self, sample_id: str, label: str, *, new_label: bool = False) -> dict[str, Any]:
        """``new_label``: confirm a label close to a known one (the admin token only)."""
        body: dict[str, Any] = self._json("PATCH", f"/v1/samples/{sample_id}",
                                          json={"label": label, "new_label": new_label})  # fmt: skip
        return body

    def confirm(self, sample_id: str, label: str) -> dict[str, Any]:
        """Say the sample's label (``label``, as you saw it) is right: the data check stops listing it (admin)."""
        body: dict[str, Any] = self._json("POST", f"/v1/samples/{sample_id}/confirm", json={"label": label})
        return body

    def delete_sample(self, sample_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._json("DELETE", f"/v1/samples/{sample_id}")
        return body

    # ------------------------------------------------------------------ labels
    def labels(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/labels")["labels"])

    def add_label(self, name: str, *, new_label: bool = False) -> list[dict[str, Any]]:
        return list(self._json("POST", "/v1/labels", json={"name": name, "new_label": new_label})["labels"])

    # ------------------------------------------------------------------ jobs
    def retrain(self, **params: Any) -> Job:
        """Start a retraining job (``epochs``, ``backbone``, ``warm_start``, ``overrides``... as
        ``POST /v1/retrain`` takes them); its :class:`Job` handle."""
        accepted = self._json("POST", "/v1/retrain", json=params)
        return Job(self, str(accepted["job_id"]), {"id": accepted["job_id"], "status": accepted["status"],
                                                  "candidate_version": accepted.get("candidate_version")})  # fmt: skip

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}")
        return body

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/jobs", params={"limit": limit})["jobs"])

    def job_handle(self, job_id: str) -> Job:
        return Job(self, job_id).refresh()

    def cancel(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._json("POST", f"/v1/jobs/{job_id}/cancel")
        return body

    # ------------------------------------------------------------------ models
    def models(self) -> dict[str, Any]:
        """``model_name``, ``default`` (the version in service), ``models`` and the deployment ``history``."""
        body: dict[str, Any] = self._json("GET", "/v1/models")
        return body

    def model(self, version: str) -> dict[str, Any]:
        body: dict[str, Any] = self._json("GET", f"/v1/models/{version}")
        return body

    def promote(self, version: str, *, force: bool = False) -> dict[str, Any]:
        """Put ``version`` in service (``force``: one the gate rejected)."""
        body: dict[str, Any] = self._json("POST", f"/v1/models/{version}/promote", params={"force": force})
        return body

    def rollback(self) -> dict[str, Any]:
        """Back to the version in service before the current one; the model now in service."""
        body: dict[str, Any] = self._json("POST", "/v1/rollback")
        return body

    # ------------------------------------------------------------------ review and drift
    def review(self, limit: int = 20, strategy: str = "margin", status: str = "queued") -> list[dict[str, Any]]:
        """Captured inputs nobody labelled yet, the most uncertain first (the first page; :meth:`review_items`
        walks them all)."""
        return list(self.review_page(limit, strategy, status)["items"])

    def review_page(self, limit: int = 20, strategy: str = "margin", status: str = "queued", *,
                    after: str | None = None, offset: int = 0) -> dict[str, Any]:  # fmt: skip
        """One page of the queue as the admin answers it: ``items`` and ``next``, the cursor to pass as
        ``after`` for the page that follows (null: no more). Admins before the cursor answer no ``next``."""
        params: dict[str, Any] = {"limit": limit, "strategy": strategy, "status": status}
        if after is not None:
            params["after"] = after
        elif offset:
            params["offset"] = offset
        body: dict[str, Any] = self._json("GET", "/v1/review", params=params)
        return body

    def review_items(
        self, strategy: str = "margin", status: str = "queued", *, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every capture in the queue, page by page in the strategy's order, each once.

        The pages follow the admin's ``next`` cursor, so captures that arrive during the walk and decisions
        taken on the items already returned (label them as they come) neither repeat nor skip one. An admin
        that answers no cursor (older versions) is paged by offset, which shifts when the queue changes
        meanwhile. ``strategy="random"`` has no order to continue: it is one page of ``page_size``."""
        after: str | None = None
        offset = 0
        while True:
            body = self.review_page(page_size, strategy, status, after=after, offset=offset)
            items: list[dict[str, Any]] = body["items"]
            yield from items
            if "next" in body:
                after = body["next"]
                if after is None:
                    return
            elif len(items) < page_size or strategy == "random":
                return
            else:
                offset += len(items)

    def review_image(self, capture_id: str) -> bytes:
        return self.request("GET", f"/v1/review/{capture_id}/image").content

    def decide(self, capture_id: str, label: str | None = None, *, skip: bool = False,
               reject: bool = False) -> dict[str, Any]:  # fmt: skip
        """Label a capture (it becomes a sample), or skip or reject it."""
        decision: dict[str, Any] = {"label": label} if label is not None else {"skip": skip, "reject": reject}
        body: dict[str, Any] = self._json("POST", f"/v1/review/{capture_id}/label", json=decision)
        return body

    def erase(self, capture_id: str) -> dict[str, Any]:
        """Erase a captured picture everywhere (admin token): every copy, its stored samples, later captures and
        uploads of it. What was removed."""
        body: dict[str, Any] = self._json("DELETE", f"/v1/review/{capture_id}")
        return body

    def erasures(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The erasures in force, newest first (admin token): ids, dates and who, nothing of the pictures."""
        return list(self._json("GET", "/v1/erasures", params={"limit": limit, "offset": offset})["erasures"])

    def lift_erasure(self, erasure_id: str) -> dict[str, Any]:
        """Lift an erasure made by mistake (admin token): the picture may be uploaded and captured again.
        :class:`~graft.client.errors.NotFoundError` for an id that is not an erasure in force."""
        body: dict[str, Any] = self._json("DELETE", f"/v1/erasures/{erasure_id}")
        return body

    def drift(self, windows: int = 6, window_s: float | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"windows": windows}
        if window_s is not None:
            params["window_s"] = window_s
        body: dict[str, Any] = self._json("GET", "/v1/drift", params=params)
        return body

    # ------------------------------------------------------------------ predictions (TorchServe)
    def predictor(
        self, inference_url: str | None = None, key_file: str | Path | None = None, model: str | None = None
    ) -> Predictor:
        """TorchServe's inference API beside this admin, its key read from the state folder; ``model`` defaults
        to the model the admin manages (asked with the admin token)."""
        served = read_endpoints(self.endpoint.state_dir)
        url = inference_url or os.environ.get("GRAFT_INFERENCE_URL") or served.get("inference_url") \
            or DEFAULT_INFERENCE_URL  # fmt: skip
        if key_file is None:
            key_file = served.get("key_file")
            if key_file is None and "key_file" not in served:  # endpoints.json says null with --no-auth
                default = self.endpoint.state_dir / "torchserve" / "key_file.json"
                key_file = default if default.is_file() else None
        management = served.get("management_url") or url
        return Predictor(str(url), str(management), Path(key_file) if key_file else None,
                         model=model or self.models().get("model_name") or None)  # fmt: skip


class Predictor:
    """Predictions from TorchServe with the inference key (renewed with the API key when it expires)."""

    def __init__(self, inference_url: str, management_url: str, key_file: Path | None, model: str | None):
        from graft.torchserve.client import TorchServeClient

        self.model = model
        self.ts = TorchServeClient(management_url, inference_url, key_file)

    def predict(self, image: str | Path | bytes, model: str | None = None, version: str | None = None
                ) -> dict[str, Any]:  # fmt: skip
        name = model or self.model
        if not name:
            raise ServiceUnreachableError("the admin names no model in service: give the model name")
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        try:
            body: dict[str, Any] = check(self.ts.predict(name, data, version)).json()
        except httpx.TransportError as e:
            raise ServiceUnreachableError(
                f"TorchServe does not answer at {self.ts.inference_url} ({type(e).__name__}): give --inference-url "
                "or GRAFT_INFERENCE_URL"
            ) from e
        return body

    def close(self) -> None:
        self.ts.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

