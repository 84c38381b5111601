"""Multipart uploads: the ``file`` parts and ``label`` fields, each file within its limit.

The whole body's size and pace are bounded before the parser ever runs (admin/api/guard.py).
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request

from admin.domain.samples import Upload
from graft.core.errors import InvalidSampleError, PayloadTooLargeError, UnsupportedFormatError


async def read_form(request: Request, max_file_bytes: int, max_files: int) -> tuple[list[Upload], list[str]]:
    """The ``file`` parts (bytes) and ``label`` values of a multipart form, every limit enforced."""
    uploads, labels, _ = await read_form_fields(request, max_file_bytes, max_files)
    return uploads, labels


async def read_form_fields(
    request: Request, max_file_bytes: int, max_files: int, fields: tuple[str, ...] = ()
) -> tuple[list[Upload], list[str], dict[str, str]]:
    """:func:`read_form`, and the text ``fields`` asked for (a form's CSRF token)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedFormatError(
            f"send multipart/form-data with fields 'file' and 'label' (got content type {ctype or 'none'!r})"
        )
    # The body's size and pace are bounded in front of the app (admin/api/guard.py); here, each file.
    async with request.form(max_files=max_files, max_fields=max_files + 8) as form:
        labels = [v for v in form.getlist("label") if isinstance(v, str)]
        files = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
        if not files:
            if form.getlist("file"):
                raise InvalidSampleError("the 'file' field must be a file part (a filename in its Content-Disposition)")
            raise InvalidSampleError("missing file: send the image in the multipart field 'file'")
        uploads = [Upload(f.filename or "upload", await _read_limited(f, max_file_bytes)) for f in files]
        extra = {k: v for k in fields if isinstance(v := form.get(k), str)}
    return uploads, labels, extra


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, total = [], 0
    while chunk := await upload.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"file {upload.filename!r} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
