"""The console's correction forms (POST, each with the session's CSRF token): relabel or delete a sample from
its page, or confirm its label (admin); approve, rename, merge or remove a label (admin). The rules are the
API's (admin/domain/corrections.py): the samples token may correct only the training samples it uploaded;
everything lands in the audit trail."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from admin.api.deps import service
from admin.console.actions import check_csrf, checked_form
from admin.console.render import ConsoleRoute, require_admin_page
from admin.console.views import listed_samples
from admin.domain.corrections import Corrections
from admin.domain.label_check import MAX_LISTED
from admin.store.rows import Actor
from graft.core.errors import GraftError, InvalidSampleError

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _see(path: str, **params: str) -> RedirectResponse:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def _field(form: dict[str, Any], name: str, what: str) -> str:
    value = str(form.get(name) or "").strip()
    if not value:
        raise InvalidSampleError(f"choose {what}")
    return value


@router.post("/samples/{sample_id}/relabel")
async def relabel(request: Request, sample_id: str) -> Response:
    session, form = await checked_form(request, admin=False)
    label = _field(form, "label", "the right label")
    fix = service(request).corrections.relabel_sample
    done = await run_in_threadpool(fix, sample_id, label, session.role, form.get("new_label") == "true")
    return _see(f"/console/samples/{sample_id}", changed=f"{done.previous} -> {done.sample.label}")


@router.post("/samples/{sample_id}/confirm")
async def confirm(request: Request, sample_id: str) -> Response:
    session, form = await checked_form(request)
    label = _field(form, "label", "the label you found right")
    done = await run_in_threadpool(service(request).corrections.confirm_sample, sample_id, label, session.role)
    return _see(f"/console/samples/{sample_id}", confirmed=done.sample.label)


@router.post("/samples/{sample_id}/delete")
async def delete(request: Request, sample_id: str) -> Response:
    session, _ = await checked_form(request, admin=False)
    done = await run_in_threadpool(service(request).corrections.delete_sample, sample_id, session.role)
    return _see("/console/samples", changed=f"deleted a sample of {done.sample.label}; its file: {done.file}")


@router.post("/jobs/{job_id}/samples")
async def review_listed(request: Request, job_id: str) -> Response:
    """The job page's form over the samples its data check listed: relabel, confirm or delete the selected ones
    (admin). Each goes through the same rules as one by one; a refused one is named and the others are done."""
    session = require_admin_page(request)
    async with request.form(max_files=0, max_fields=2 * MAX_LISTED + 8) as form:  # every listed sample selected
        check_csrf(session, form.get("csrf"))
        ids = [v for v in form.getlist("ids") if isinstance(v, str)]
        action, label = str(form.get("action") or ""), str(form.get("label") or "").strip()
    if action not in ("relabel", "confirm", "delete"):
        raise InvalidSampleError(f"unknown action {action!r}: relabel, confirm or delete")
    if not ids:
        raise InvalidSampleError("select the samples to act on first")
    if action == "relabel" and not label:
        raise InvalidSampleError("choose the right label for the selected samples")
    svc = service(request)
    job = svc.jobs.get(job_id)
    listed = {str(x["id"]): str(x["label"]) for x in listed_samples(job.data_check if job is not None else None)}
    if unknown := [i for i in ids if i not in listed]:
        raise InvalidSampleError(f"{len(unknown)} selected sample(s) are not listed by job {job_id}: reload its page")
    done, refused = await run_in_threadpool(_apply, svc.corrections, action, ids, label, listed, session.role)
    said = f"{action}: {done} done" + (f"; refused: {'; '.join(refused)}" if refused else "")
    return _see(f"/console/jobs/{job_id}", changed=said)


def _apply(fix: Corrections, action: str, ids: list[str], label: str, listed: dict[str, str],
           actor: Actor) -> tuple[int, list[str]]:  # fmt: skip
    done, refused = 0, []
    for sample_id in ids:
        try:
            if action == "relabel":
                fix.relabel_sample(sample_id, label, actor)
            elif action == "confirm":  # the label the page showed: 409 if someone changed it meanwhile
                fix.confirm_sample(sample_id, listed[sample_id], actor)
            else:
                fix.delete_sample(sample_id, actor)
            done += 1
        except GraftError as e:
            refused.append(f"{sample_id[:12]}: {e}")
    return done, refused


@router.post("/labels")
async def approve(request: Request) -> Response:
    session, form = await checked_form(request)
    name = _field(form, "name", "a label name")
    labels = service(request).labels
    label = await run_in_threadpool(lambda: labels.approve(name, actor=session.role,
                                                           new_label=form.get("new_label") == "true"))  # fmt: skip
    return _see("/console/samples", changed=f"label {label.name} approved")


@router.post("/labels/{name}/rename")
async def rename(request: Request, name: str) -> Response:
    session, form = await checked_form(request)
    to = _field(form, "to", "the new name")
    fix = service(request).corrections.rename_label
    done = await run_in_threadpool(fix, name, to, session.role, form.get("new_label") == "true")
    return _see(f"/console/labels/{quote(done.label.name, safe='')}", changed=f"renamed from {done.previous}")


@router.post("/labels/{name}/merge")
async def merge(request: Request, name: str) -> Response:
    session, form = await checked_form(request)
    into = _field(form, "into", "the label to merge into")
    done = await run_in_threadpool(service(request).corrections.merge_label, name, into, session.role)
    return _see(f"/console/labels/{quote(done.label.name, safe='')}",
                changed=f"{done.previous} merged in ({done.samples} samples)")  # fmt: skip


@router.post("/labels/{name}/delete")
async def remove(request: Request, name: str) -> Response:
    session, _ = await checked_form(request)
    svc = service(request)
    await run_in_threadpool(lambda: svc.labels.remove(name, svc.served_labels(), actor=session.role))
    return _see("/console/samples", changed=f"label {name} removed")
