"""One TorchServe request -> the encoded images it carries, plus its options.

What reaches a handler (TorchServe 0.12, checked on this machine): a dict per request whose keys are
parameter names. A raw body arrives as ``{"body": bytes}``; ``application/json`` bodies arrive already
parsed (or as bytes when they are not valid JSON); ``text/*`` bodies arrive as ``str``; multipart
uploads arrive as one key per field (``-F data=@img.jpg`` gives ``{"data": bytes}``); query
parameters arrive as extra keys only on ``/invocations`` (``/predictions`` drops the query string).

Accepted bodies: raw image bytes; ``{"data": "<base64>"}``; KServe v1
``{"instances": [{"data": "<base64>"}, ...]}`` (also ``{"b64": ...}`` or a bare base64 string per
instance). ``topk`` comes from the JSON body, a multipart field / query parameter, or an ``X-Topk`` header.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graft.core.errors import (
    BadBase64Error,
    BadInputError,
    BodyTooLargeError,
    EmptyBodyError,
    FormContentTypeError,
)

OPTION_KEYS = ("topk",)
# TorchServe drops the query string of /predictions calls (only /invocations forwards it), so raw-image
# clients choose k with this header, a multipart field or the JSON body's "topk".
TOPK_HEADER = "x-topk"
BODY_KEYS = ("body", "data", "file", "image")
FORM_TYPES = ("application/x-www-form-urlencoded",)


@dataclass(frozen=True)
class ParsedRequest:
    payloads: list[bytes]  # encoded images, one per instance
    kserve: bool  # answer in the KServe v1 shape (one prediction list per instance)
    topk: int | None  # None: the model's default


def header_value(headers: Mapping[str, Any], name: str) -> str:
    """Case-insensitive request header lookup (TorchServe forwards names as the client spelled them)."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return ""


def parse_topk(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8", "replace")
    k = -1
    if isinstance(value, int) and not isinstance(value, bool):
        k = value
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 9:  # no 5000-digit ints
        k = int(value.strip())
    if k < 1:
        raise BadInputError(f"topk must be a positive integer, got {str(value)[:20]!r}")
    return k


def _b64(text: Any, where: str, max_bytes: int) -> bytes:
    if not isinstance(text, str):
        raise BadInputError(f"{where} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:  # data URL: data:image/jpeg;base64,....
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # line-wrapped base64 (e.g. from `base64` with default wrapping)
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise BodyTooLargeError(f"{where} decodes to more than {max_bytes} bytes, the per-image limit")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadBase64Error(f"{where} is not valid base64: {e}") from e
    if not raw:
        raise EmptyBodyError(f"{where} is empty")
    return raw


def _instance(inst: Any, where: str, max_bytes: int) -> bytes:
    if isinstance(inst, Mapping):
        for key in ("data", "b64", "image_bytes"):
            if key in inst:
                value = inst[key]
                if isinstance(value, Mapping) and "b64" in value:  # TF-serving style {"b64": ...}
                    value = value["b64"]
                return _b64(value, f"{where}.{key}", max_bytes)
        raise BadInputError(f"{where} needs a 'data' field holding base64 image bytes")
    return _b64(inst, where, max_bytes)


def _from_json(doc: Any, max_bytes: int, max_instances: int) -> ParsedRequest:
    if not isinstance(doc, Mapping):
        raise BadInputError('JSON body must be an object: {"data": "<base64>"} or {"instances": [...]}')
    topk = parse_topk(doc["topk"]) if "topk" in doc else None
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadInputError("'instances' must be a non-empty list")
        if len(instances) > max_instances:
            raise BodyTooLargeError(f"{len(instances)} instances in one request; the limit is {max_instances}")
        payloads = [_instance(x, f"instances[{i}]", max_bytes) for i, x in enumerate(instances)]
        return ParsedRequest(payloads=payloads, kserve=True, topk=topk)
    if "data" in doc:
        return ParsedRequest(payloads=[_instance(doc, "body", max_bytes)], kserve=False, topk=topk)
    raise BadInputError('JSON body needs "data" (base64 image) or "instances" (KServe v1)')


def _looks_like_json(raw: bytes) -> bool:
    return raw.lstrip()[:1] in (b"{", b"[")


def _from_body(body: Any, content_type: str, max_bytes: int, max_instances: int) -> ParsedRequest:
    if isinstance(body, Mapping | list):  # TorchServe already parsed an application/json body
        return _from_json(body, max_bytes, max_instances)
    if isinstance(body, str):
        # TorchServe decoded a text/* body as UTF-8; encoding it back gives the exact bytes that were sent.
        body = body.encode("utf-8")
    if not isinstance(body, bytes | bytearray):
        raise BadInputError(f"unexpected body type {type(body).__name__}")
    raw = bytes(body)
    if not raw:
        raise EmptyBodyError("empty body: send the image bytes, or a JSON document")
    if content_type.startswith("application/json") or _looks_like_json(raw):
        try:
            doc = json.loads(raw)
        except RecursionError as e:
            raise BadInputError("JSON body is nested too deeply") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if content_type.startswith("application/json"):
                raise BadInputError(f"body is not valid JSON: {e}") from e
        except ValueError as e:  # valid JSON Python refuses to read, e.g. an integer of thousands of digits
            raise BadInputError(f"JSON body cannot be read: {e}") from e
        else:
            return _from_json(doc, max_bytes, max_instances)
    if len(raw) > max_bytes:
        raise BodyTooLargeError(f"body has {len(raw)} bytes; the per-image limit is {max_bytes}")
    return ParsedRequest(payloads=[raw], kserve=False, topk=None)


def parse_request(
    item: Mapping[str, Any], headers: Mapping[str, Any], max_bytes: int, max_instances: int
) -> ParsedRequest:
    """Turn one TorchServe request dict into payloads; raise :class:`BadInputError` naming the problem."""
    content_type = header_value(headers, "content-type").lower()
    if content_type.startswith(FORM_TYPES):
        raise FormContentTypeError(
            f"body sent as {content_type}, which TorchServe decodes as form fields; send "
            "'Content-Type: application/octet-stream' (or image/jpeg) for image bytes, application/json for JSON"
        )
    topk = parse_topk(item["topk"]) if "topk" in item else None
    if topk is None and header_value(headers, TOPK_HEADER):
        topk = parse_topk(header_value(headers, TOPK_HEADER))
    fields = {k: v for k, v in item.items() if k not in OPTION_KEYS}
    key = next((k for k in BODY_KEYS if k in fields), None)
    if key is None and len(fields) == 1:  # a multipart upload under another field name
        key = next(iter(fields))
    if key is None:
        raise EmptyBodyError(f"no image in the request (fields: {sorted(fields)[:5]})")
    parsed = _from_body(fields[key], content_type, max_bytes, max_instances)
    return ParsedRequest(parsed.payloads, parsed.kserve, parsed.topk if parsed.topk is not None else topk)
