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
from admin.console.actions import checked_form
from admin.console.render import ConsoleRoute
from graft.core.errors import InvalidSampleError

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
