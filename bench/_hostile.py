"""Hostile and malformed requests for bench/reliability.py: inference bodies and admin requests.

Each case says what a correct service answers (a status class) and, for the admin, whether anything may
be stored. Inputs are built in memory; nothing here talks to a server.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from dataclasses import dataclass, field

from PIL import Image

OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    expect: str = "4xx"  # or "200"


def _enc(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_bomb(w: int = 20_000, h: int = 20_000) -> bytes:
    """A PNG whose header claims w x h pixels, with almost no data: refused from the header."""
    return _enc(Image.new("1", (w, h)), "PNG")


def inference_cases(valid: list[bytes]) -> list[Case]:
    """About 40 kinds of bad request, and the valid JPEGs; the suite cycles through them."""
    jpeg = valid[0]
    b64 = base64.b64encode(jpeg).decode()
    deep = "[" * 100_000 + "]" * 100_000
    cases = [
        Case("empty body", b"", OCTET),
        Case("random bytes", os.urandom(2048), OCTET),
        Case("zeros", bytes(4096), OCTET),
        Case("text", b"hello, I am not an image", {"Content-Type": "text/plain"}),
        Case("truncated JPEG", jpeg[: len(jpeg) // 3], OCTET),
        Case("JPEG magic only", b"\xff\xd8\xff\xe0" + bytes(64), OCTET),
        Case("PNG magic only", b"\x89PNG\r\n\x1a\n" + bytes(64), OCTET),
        Case("PNG bomb (400 Mpx header)", _png_bomb(), OCTET),
        Case("aspect 1:4000", _enc(Image.new("RGB", (1, 4000)), "PNG"), OCTET),
        Case("TIFF", _enc(Image.new("RGB", (16, 16)), "TIFF"), OCTET),
        Case("PDF", b"%PDF-1.4\n" + os.urandom(512), OCTET),
        Case("GIF header, no frame", b"GIF89a" + bytes(16), OCTET),
        Case("JSON not an object", b"[1, 2, 3]", JSON),
        Case("JSON string", b'"just a string"', JSON),
        Case("JSON malformed", b'{"data": ', JSON),
        Case("JSON no data", b'{"image": 1}', JSON),
        Case("JSON data not base64", b'{"data": "!!!not base64!!!"}', JSON),
        Case("JSON data a number", b'{"data": 12345}', JSON),
        Case("JSON data empty", b'{"data": ""}', JSON),
        Case("JSON data base64 of text", json.dumps({"data": base64.b64encode(b"text").decode()}).encode(), JSON),
        Case("JSON nested 100k deep", ('{"data": ' + deep + "}").encode(), JSON),
        Case("JSON array 100k deep", deep.encode(), JSON),
        Case("JSON huge integer topk", b'{"data": "' + b64.encode() + b'", "topk": ' + b"9" * 5000 + b"}", JSON),
        Case("JSON topk zero", json.dumps({"data": b64, "topk": 0}).encode(), JSON),
        Case("JSON topk negative", json.dumps({"data": b64, "topk": -3}).encode(), JSON),
        Case("JSON topk string", json.dumps({"data": b64, "topk": "ten"}).encode(), JSON),
        Case("KServe instances empty", b'{"instances": []}', JSON),
        Case("KServe instances not a list", b'{"instances": {"data": 1}}', JSON),
        Case("KServe 200 instances", json.dumps({"instances": [{"data": b64}] * 200}).encode(), JSON),
        Case("KServe one bad instance", json.dumps({"instances": [{"data": b64}, {"data": "@@"}]}).encode(), JSON),
        Case("KServe instance without data", json.dumps({"instances": [{"b": 1}]}).encode(), JSON),
        Case("base64 of random bytes", json.dumps({"data": base64.b64encode(os.urandom(512)).decode()}).encode(), JSON),
        Case("form body (text)", b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded"}),
        Case("X-Topk header garbage", jpeg, {**OCTET, "X-Topk": "lots"}),
        Case("X-Topk header zero", jpeg, {**OCTET, "X-Topk": "0"}),
        Case("CMYK JPEG truncated", _enc(Image.new("CMYK", (64, 64)), "JPEG")[:200], OCTET),
        Case("BMP header lie", b"BM" + (10_000_000).to_bytes(4, "little") + bytes(64), OCTET),
        Case("WebP header only", b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(32), OCTET),
        Case("data URL not base64", json.dumps({"data": "data:image/jpeg;base64,%%%"}).encode(), JSON),
        Case("UTF-16 JSON", '{"data": "x"}'.encode("utf-16"), JSON),
    ]
    return cases + [Case(f"valid JPEG {i}", body, OCTET, "200") for i, body in enumerate(valid)]


# --------------------------------------------------------------------------- the admin


@dataclass(frozen=True)
class AdminCase:
    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str | list[str]] | None = None


ADMIN_ROUTES = [
    ("GET", "/v1/samples/stats"), ("GET", "/v1/samples/" + "0" * 64), ("POST", "/v1/retrain"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/models"), ("GET", "/v1/models/1"),
    ("POST", "/v1/models/1/promote"), ("POST", "/v1/rollback"), ("GET", "/v1/labels"), ("POST", "/v1/labels"),
    ("POST", "/v1/samples/" + "0" * 64 + "/confirm"),
]  # fmt: skip


def admin_cases(admin_token: str, samples_token: str, image: bytes) -> list[AdminCase]:
    """Requests that must all be refused with a 4xx and store nothing (about 320 of them)."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    sampler = {"Authorization": f"Bearer {samples_token}"}
    creds = {
        "no token": {}, "wrong token": {"Authorization": "Bearer " + "w" * 40},
        "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="}, "bare token": {"Authorization": admin_token},
        "token prefix": {"Authorization": f"Bearer {admin_token[:-1]}"},
        "token + suffix": {"Authorization": f"Bearer {admin_token}x"}, "samples token": sampler,
        # "Bearer " with its trailing space cannot be sent (h11 refuses the header value): the scheme alone.
        "empty bearer": {"Authorization": "Bearer"}, "null byte": {"Authorization": "Bearer \x00" + admin_token},
    }  # fmt: skip
    # The samples token may read the label set (the labels it may use): that one route is no refusal for it.
    cases = [AdminCase(f"{who} {m} {p}", m, p, h) for m, p in ADMIN_ROUTES for who, h in creds.items()
             if not (who == "samples token" and (m, p) == ("GET", "/v1/labels"))]  # fmt: skip
    cases = [c for c in cases if not (c.headers.get("Authorization", "").startswith("Bearer \x00"))]
    rng = random.Random(11)
    routes = [*ADMIN_ROUTES, ("POST", "/v1/samples"), ("POST", "/v1/samples/batch")]
    for i in range(80):  # guesses: random tokens of plausible shapes on every route
        method, path = routes[i % len(routes)]
        shapes = [admin_token[:8] + rng.randbytes(12).hex(), rng.randbytes(16).hex(), "x" * len(admin_token)]
        guess = rng.choice(shapes)
        headers = {"Authorization": f"Bearer {guess}"}
        cases.append(AdminCase(f"guessed token {i} {method} {path}", method, path, headers))
    cases += [AdminCase(f"{who} docs {p}", "GET", p, h) for p in ("/docs", "/openapi.json", "/redoc")
              for who, h in (("no token", {}), ("samples token", sampler))]  # fmt: skip

    def sample(name: str, label: str | None, body: bytes, headers: dict[str, str], path: str = "/v1/samples"
               ) -> AdminCase:  # fmt: skip
        data = {"label": label} if label is not None else {}
        return AdminCase(name, "POST", path, headers, files=[("file", ("x.jpg", body, "image/jpeg"))], data=data)

    bad_labels = ["../../etc/passwd", "a/b", "a\\b", "..", "ants\x00", "ants\nbees", "ants\u2028", "ants\u2029",
                  "a\u200bb", " ants", "ants ", "", "   ", "a" * 65, "é" * 65, "x:y", 'q"uote', "<script>"]  # fmt: skip
    for i, label in enumerate(bad_labels):
        for who, h in (("admin", admin), ("samples", sampler)):
            for path in ("/v1/samples", "/v1/samples/batch"):
                cases.append(sample(f"label {i} {label[:12]!r} ({who}, {path})", label, image, h, path))
    # Well-formed new names: an admin may add them (the label set is the admin's), the samples token may not.
    for label in ("wasps", "Wasps", "new-class", "hornets", "ＷＡＳＰＳ", "'; DROP TABLE samples;--", "ＤＲＯＰ"):
        for path in ("/v1/samples", "/v1/samples/batch"):
            cases.append(sample(f"unknown label {label!r} (samples token, {path})", label, image, sampler, path))
    rng = random.Random(7)
    bodies = {
        "empty file": b"", "text": b"not an image at all", "truncated": image[: len(image) // 2],
        "tiff": _enc(Image.new("RGB", (8, 8)), "TIFF"), "png bomb": _png_bomb(), "pdf": b"%PDF-1.4 x",
        "random": rng.randbytes(4096), "aspect": _enc(Image.new("RGB", (1, 3000)), "PNG"),
    }  # fmt: skip
    for name, body in bodies.items():
        for who, h in (("admin", admin), ("samples", sampler)):
            cases.append(sample(f"upload {name} ({who})", "ants", body, h))
    cases += [
        sample("no label", None, image, admin),
        AdminCase("no file", "POST", "/v1/samples", admin, data={"label": "ants"}),
        AdminCase("raw body, image content type", "POST", "/v1/samples", {**admin, "Content-Type": "image/jpeg"},
                  content=image),
        AdminCase("JSON to the upload route", "POST", "/v1/samples", {**admin, **JSON}, content=b'{"label": "a"}'),
        AdminCase("two files on the single route", "POST", "/v1/samples", admin,
                  files=[("file", ("a.jpg", image, "image/jpeg")), ("file", ("b.jpg", image, "image/jpeg"))],
                  data={"label": "ants"}),
        AdminCase("multipart without boundary", "POST", "/v1/samples",
                  {**admin, "Content-Type": "multipart/form-data"}, content=b"--x\r\n\r\n"),
        AdminCase("multipart garbage", "POST", "/v1/samples",
                  {**admin, "Content-Type": "multipart/form-data; boundary=zz"}, content=os.urandom(2000)),
        AdminCase("batch: labels count mismatch", "POST", "/v1/samples/batch", admin,
                  files=[("file", ("a.jpg", image, "image/jpeg"))], data={"label": ["ants", "bees"]}),
        AdminCase("batch: one bad item", "POST", "/v1/samples/batch", admin,
                  files=[("file", ("a.jpg", image, "image/jpeg")), ("file", ("b.txt", b"nope", "text/plain"))],
                  data={"label": "ants"}),
        AdminCase("batch: 64 compressible 6300x6300 PNGs", "POST", "/v1/samples/batch", sampler,
                  files=[("file", (f"{i}.png", _big_png(i), "image/png")) for i in range(64)], data={"label": "ants"}),
    ]  # fmt: skip
    bodies_json = [
        ("retrain: unknown override", {"overrides": {"outp": "/etc"}}),
        ("retrain: path override", {"overrides": {"output": "/etc"}}),
        ("retrain: data override", {"overrides": {"data": "/"}}),
        ("retrain: weights path", {"weights": "/etc/passwd"}),
        ("retrain: bad epochs", {"epochs": 0}),
        ("retrain: epochs huge", {"epochs": 10**9}),
        ("retrain: momentum out of range", {"overrides": {"momentum": 3}}),
        ("retrain: conflicting freezing", {"overrides": {"freeze_until": "x", "trainable_stages": 1}}),
        ("retrain: extra field", {"bogus": True}),
        ("retrain: flag injection", {"overrides": {"lr": "--output=/etc"}}),
        ("retrain: backbone injection", {"backbone": "resnet18; rm -rf /"}),
    ]
    cases += [AdminCase(n, "POST", "/v1/retrain", {**admin, **JSON}, content=json.dumps(b).encode())
              for n, b in bodies_json]  # fmt: skip
    cases += [
        AdminCase("retrain: malformed JSON", "POST", "/v1/retrain", {**admin, **JSON}, content=b"{nope"),
        AdminCase("retrain: malformed JSON, no token", "POST", "/v1/retrain", JSON, content=b"{nope"),
        AdminCase("retrain: 70 KB JSON", "POST", "/v1/retrain", {**admin, **JSON},
                  content=json.dumps({"epochs": 1, "pad": "x" * 70_000}).encode()),
        AdminCase("labels: bad name", "POST", "/v1/labels", {**admin, **JSON}, content=b'{"name": "a/b"}'),
        AdminCase("labels: remove a served one", "DELETE", "/v1/labels/ants", admin),
        AdminCase("promote unknown", "POST", "/v1/models/999/promote", admin),
        AdminCase("confirm: unknown sample", "POST", f"/v1/samples/{'0' * 64}/confirm", {**admin, **JSON},
                  content=b'{"label": "ants"}'),
        AdminCase("confirm: malformed JSON", "POST", f"/v1/samples/{'0' * 64}/confirm", {**admin, **JSON},
                  content=b"{nope"),
        AdminCase("confirm: extra field", "POST", f"/v1/samples/{'0' * 64}/confirm", {**admin, **JSON},
                  content=b'{"label": "ants", "split": "train"}'),
        AdminCase("confirm: 70 KB label", "POST", f"/v1/samples/{'0' * 64}/confirm", {**admin, **JSON},
                  content=json.dumps({"label": "x" * 70_000}).encode()),
    ]  # fmt: skip
    return cases


_BIG: dict[int, bytes] = {}


def _big_png(i: int) -> bytes:
    """A 6300 x 6300 PNG of one colour (a few KB; 40 Mpx to decode), distinct bytes per ``i``."""
    if 0 not in _BIG:
        _BIG[0] = _enc(Image.new("L", (6300, 6300), 0), "PNG", optimize=True)
    return _BIG[0] + bytes([i])
