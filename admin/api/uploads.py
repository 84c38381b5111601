"""Multipart uploads with a size limit enforced while the body streams in.

Starlette would spool a whole multipart body to disk before a route sees it, so the limit has to sit
in front of the parser: the ``receive`` channel is wrapped and counts bytes, refusing with 413 the
moment the count passes the limit (and at once when ``Content-Length`` already says so).
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from admin.domain.samples import Upload
from graft.core.errors import InvalidSampleError, PayloadTooLargeError, UnsupportedFormatError

_MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the label field


def limited_request(request: Request, limit: int) -> Request:
    """The same request, whose body stream raises :class:`PayloadTooLargeError` past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit} bytes")
    seen = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError(f"request body passed the limit of {limit} bytes; refused while uploading")
        return message

    return Request(request.scope, counting_receive)


async def read_form(
    request: Request, max_file_bytes: int, max_files: int, body_limit: int | None = None
) -> tuple[list[Upload], list[str]]:
    """The ``file`` parts (bytes) and ``label`` values of a multipart form, every limit enforced."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedFormatError(
            f"send multipart/form-data with fields 'file' and 'label' (got content type {ctype or 'none'!r})"
        )
    limit = body_limit if body_limit is not None else max_file_bytes * max_files + _MULTIPART_OVERHEAD
    limited = limited_request(request, limit)
    async with limited.form(max_files=max_files, max_fields=max_files + 8) as form:
        labels = [v for v in form.getlist("label") if isinstance(v, str)]
        files = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
        if not files:
            if form.getlist("file"):
                raise InvalidSampleError("the 'file' field must be a file part (a filename in its Content-Disposition)")
            raise InvalidSampleError("missing file: send the image in the multipart field 'file'")
        uploads = [Upload(f.filename or "upload", await _read_limited(f, max_file_bytes)) for f in files]
    return uploads, labels


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, total = [], 0
    while chunk := await upload.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"file {upload.filename!r} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
