"""The console's pages (GET): overview, models, jobs, samples and labels, review, history, and the images they
show."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from admin.api.deps import service
from admin.api.models import champion_measurements
from admin.console import views
from admin.console.render import ConsoleRoute, page, require_admin_page, session_of
from admin.domain.corrections import sees_splits
from graft.core.errors import NotFoundError

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
          ".bmp": "image/bmp", ".gif": "image/gif"}  # fmt: skip
_IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600",
                  "Content-Security-Policy": "default-src 'none'"}  # fmt: skip


def _image(path: object) -> FileResponse:
    from pathlib import Path

    p = Path(str(path))
    return FileResponse(p, media_type=_MEDIA.get(p.suffix.lower(), "application/octet-stream"), headers=_IMAGE_HEADERS)


@router.get("/login")
def login_form(request: Request, next: str = "/console") -> Response:
    return page(request, "login.html", next=next if next.startswith("/console") else "/console", error=None)


@router.get("")
def overview(request: Request) -> Response:
    if not session_of(request).is_admin:
        return RedirectResponse("/console/review", status_code=303)
    return page(request, "overview.html", o=views.overview(service(request)))


@router.get("/models")
def models(request: Request) -> Response:
    require_admin_page(request)
    svc = service(request)
    measured = champion_measurements(svc)
    return page(request, "models.html", models=[views.model_view(v, svc, measured) for v in reversed(svc.models())],
                model_name=svc.model_name, history=list(reversed(svc.history()))[:20])  # fmt: skip


@router.get("/models/{version}")
def model(request: Request, version: str) -> Response:
    require_admin_page(request)
    svc = service(request)
    return page(request, "model.html", m=views.model_view(svc.model_view(version), svc))


@router.get("/models/{version}/plot/{name}")
def model_plot(request: Request, version: str, name: str) -> FileResponse:
    require_admin_page(request)
    m = service(request).registry.get(version)
    if name not in views.PLOTS or m.run_dir is None or not (m.run_dir / views.PLOTS[name]).is_file():
        raise NotFoundError(f"version {version} has no {name} plot")
    return _image(m.run_dir / views.PLOTS[name])


@router.get("/models/{version}/promote")
def confirm_promote(request: Request, version: str, force: bool = False) -> Response:
    require_admin_page(request)
    svc = service(request)
    target = views.model_view(svc.model_view(version), svc)
    current = svc.registry.default_version()
    job = views.job_view(svc.jobs.get(target["job_id"])) if target["job_id"] else None
    return page(request, "confirm.html", action=f"/console/models/{version}/promote", force=force,
                title=f"Promote version {version}?" + (" (rejected by the gate)" if force else ""),
                what=views.change_words(svc, current, version), target=target, job=job,
                champion=views.model_view(svc.model_view(current), svc) if current else None)  # fmt: skip


@router.get("/rollback")
def confirm_rollback(request: Request) -> Response:
    require_admin_page(request)
    svc = service(request)
    target = svc.registry.rollback_target()
    current = svc.registry.default_version()
    return page(request, "confirm.html", action="/console/rollback", force=False,
                title=f"Roll back to version {target}?", what=views.change_words(svc, current, target),
                target=views.model_view(svc.model_view(target), svc), job=None,
                champion=views.model_view(svc.model_view(current), svc) if current else None)  # fmt: skip


@router.get("/jobs")
def jobs(request: Request) -> Response:
    require_admin_page(request)
    svc = service(request)
    in_service = svc.registry.default_version()
    return page(request, "jobs.html", jobs=[views.job_view(j, in_service) for j in svc.jobs.recent(30)],
                active=svc.jobs.active())  # fmt: skip


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str, changed: str | None = None) -> Response:
    require_admin_page(request)
    svc = service(request)
    j = svc.jobs.get(job_id)
    return page(request, "job.html", j=views.job_view(j, svc.registry.default_version()), log=views.log_tail(j),
                labels=views.label_rows(svc, "admin"), changed=changed)  # fmt: skip


@router.get("/samples")
def samples(request: Request, stored: int | None = None, duplicates: int | None = None,
            label: Annotated[str | None, Query(max_length=512)] = None,
            changed: str | None = None) -> Response:  # fmt: skip
    """The labels and the newest samples: the admin's all, the samples token's its own (as ``GET /v1/samples``),
    without the counts per split (``GET /v1/samples/stats`` is the admin's)."""
    role = session_of(request).role
    svc = service(request)
    shown = svc.labels.get(label).name if label else None
    recent = svc.samples.browse(shown, None if sees_splits(role) else "samples", limit=48)
    return page(request, "samples.html", stats=svc.stats() if sees_splits(role) else None,
                labels=views.label_rows(svc, role), recent=recent, stored=stored, duplicates=duplicates, shown=shown,
                changed=changed)  # fmt: skip


@router.get("/samples/{sample_id}")
def sample(request: Request, sample_id: str, changed: str | None = None, confirmed: str | None = None) -> Response:
    """One sample: its image and facts; relabel and delete when this session may; its history (admin)."""
    session = session_of(request)
    svc = service(request)
    s = svc.corrections.sample(sample_id)
    svc.corrections.may_see(s, session.role)
    history = svc.audit.entries(50, target=s.id) if session.is_admin else []
    return page(request, "sample.html", s=s, labels=views.label_rows(svc, session.role), history=history,
                changed=changed, confirmed=confirmed, refused=views.may_change(svc, s, session.role))  # fmt: skip


@router.get("/labels/{name}")
def label(request: Request, name: str, changed: str | None = None) -> Response:
    """One label: its counts, rename, merge, remove, and its history (admin)."""
    require_admin_page(request)
    svc = service(request)
    found = svc.labels.get(name)
    (row,) = [r for r in views.label_rows(svc) if r["name"] == found.name]
    return page(request, "label.html", label=row, labels=views.label_rows(svc), changed=changed,
                history=svc.audit.entries(50, target=found.name))  # fmt: skip


@router.get("/history")
def history(request: Request, action: Annotated[str | None, Query(max_length=64)] = None,
            before: int | None = None) -> Response:  # fmt: skip
    """The audit trail: who changed the data, what, when (admin)."""
    require_admin_page(request)
    entries = service(request).audit.entries(100, before, action or None)
    return page(request, "history.html", entries=entries, action=action or "",
                older=entries[-1].id if len(entries) == 100 else None)  # fmt: skip


@router.get("/samples/{sample_id}/image")
def sample_image(request: Request, sample_id: str) -> FileResponse:
    svc = service(request)
    meta = svc.samples.get(sample_id) if len(sample_id) == 64 else None
    path = svc.samples.path_of(sample_id) if meta is not None else None
    if meta is None or path is None or not path.is_file():
        raise NotFoundError(f"no sample {sample_id!r}")
    svc.corrections.may_see(meta, session_of(request).role)  # a holdout picture is the admin's to see
    return _image(path)


@router.get("/review")
def review(request: Request, strategy: Annotated[str, Query(pattern="^(margin|entropy|random)$")] = "margin"
           ) -> Response:  # fmt: skip
    svc = service(request)
    labels = [label.name for label in svc.labels.all()]  # in key order: a new label never moves another's key
    return page(request, "review.html", labels=labels, strategy=strategy, model_name=svc.model_name,
                orders=views.REVIEW_ORDERS)  # fmt: skip


@router.get("/review/{capture_id}/image")
def review_image(request: Request, capture_id: str) -> Response:
    capture, _ = service(request).feedback.review.image(capture_id, service(request).model_name)
    return Response(capture.image, media_type=capture.record.media_type, headers=_IMAGE_HEADERS)
