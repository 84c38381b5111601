"""Request parsing: what TorchServe hands the handler -> image payloads and options (no model needed)."""

from __future__ import annotations

import base64

import pytest

from graft.core.errors import (
    BadBase64Error,
    BadInputError,
    BodyTooLargeError,
    EmptyBodyError,
    FormContentTypeError,
)
from handlers.requests import parse_request

JPEG_ISH = b"\xff\xd8\xff\xe0" + b"\x00" * 100
B64 = base64.b64encode(JPEG_ISH).decode()


def parse(item, headers=None, max_bytes=10_000, max_instances=4):
    return parse_request(item, headers or {}, max_bytes, max_instances)


def test_raw_body_is_one_payload():
    p = parse({"body": JPEG_ISH}, {"Content-Type": "application/octet-stream"})
    assert p.payloads == [JPEG_ISH]
    assert not p.kserve
    assert p.topk is None


def test_json_data_already_parsed_by_torchserve():
    p = parse({"body": {"data": B64, "topk": 3}}, {"content-type": "application/json"})
    assert p.payloads == [JPEG_ISH]
    assert p.topk == 3
    assert not p.kserve


def test_json_bytes_with_wrong_content_type_still_understood():
    p = parse({"body": f'{{"data": "{B64}"}}'.encode()}, {"Content-Type": "application/octet-stream"})
    assert p.payloads == [JPEG_ISH]


def test_kserve_v1_instances_in_order_with_all_spellings():
    other = base64.b64encode(b"second").decode()
    doc = {"instances": [{"data": B64}, {"b64": other}, B64, {"data": {"b64": other}}]}
    p = parse({"body": doc})
    assert p.kserve
    assert p.payloads == [JPEG_ISH, b"second", JPEG_ISH, b"second"]


def test_kserve_bad_instance_is_named():
    with pytest.raises(BadBase64Error, match=r"instances\[1\]"):
        parse({"body": {"instances": [{"data": B64}, {"data": "%%%not base64%%%"}]}})


def test_too_many_instances():
    with pytest.raises(BodyTooLargeError, match="5 instances"):
        parse({"body": {"instances": [B64] * 5}})


def test_data_url_and_wrapped_base64_accepted():
    wrapped = "\n".join(B64[i : i + 20] for i in range(0, len(B64), 20))
    assert parse({"body": {"data": "data:image/jpeg;base64," + wrapped}}).payloads == [JPEG_ISH]


@pytest.mark.parametrize("value", ["not base64!", "abc", 123])
def test_bad_base64(value):
    with pytest.raises(BadInputError) as e:
        parse({"body": {"data": value}})
    assert e.value.status_code == 400


def test_multipart_field_under_any_name():
    assert parse({"file": JPEG_ISH}, {"Content-Type": "multipart/form-data; boundary=x"}).payloads == [JPEG_ISH]
    p = parse({"data": JPEG_ISH, "topk": b"1"}, {"Content-Type": "multipart/form-data; boundary=x"})
    assert p.payloads == [JPEG_ISH]
    assert p.topk == 1


def test_topk_header_and_body_priority():
    assert parse({"body": JPEG_ISH}, {"X-Topk": "2"}).topk == 2
    assert parse({"body": {"data": B64, "topk": 4}}, {"x-topk": "2"}).topk == 4


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", ""])
def test_bad_topk(bad):
    with pytest.raises(BadInputError, match="topk"):
        parse({"body": {"data": B64, "topk": bad}})


def test_form_content_type_refused_with_advice():
    # What TorchServe hands over for `curl -d @x.json` (form-urlencoded): the body split into form fields.
    with pytest.raises(FormContentTypeError) as e:
        parse({'{"data":"abc': b""}, {"Content-Type": "application/x-www-form-urlencoded"})
    assert e.value.status_code == 415
    assert "application/octet-stream" in str(e.value)


def test_empty_and_missing_bodies():
    with pytest.raises(EmptyBodyError):
        parse({"body": b""})
    with pytest.raises(EmptyBodyError):
        parse({})
    with pytest.raises(EmptyBodyError):
        parse({"body": {"data": ""}})


def test_body_size_limits_before_decoding():
    with pytest.raises(BodyTooLargeError) as e:
        parse({"body": b"x" * 10_001})
    assert e.value.status_code == 413
    with pytest.raises(BodyTooLargeError):
        parse({"body": {"data": base64.b64encode(b"x" * 10_010).decode()}})


def test_text_bodies_are_reencoded_not_rejected():
    # TorchServe decodes text/* bodies to str when they are valid UTF-8; the bytes sent come back exactly.
    assert parse({"body": "just some text"}, {"Content-Type": "text/plain"}).payloads == [b"just some text"]
    assert parse({"body": f'{{"data": "{B64}"}}'}, {"Content-Type": "text/plain"}).payloads == [JPEG_ISH]


def test_invalid_json_bodies():
    with pytest.raises(BadInputError, match="not valid JSON"):
        parse({"body": b"{nope"}, {"Content-Type": "application/json"})
    with pytest.raises(BadInputError, match='"data"'):
        parse({"body": {"image": B64}})
    with pytest.raises(BadInputError, match="object"):
        parse({"body": [B64]})


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b'{"data": "aGk=", "topk": ' + b"9" * 5000 + b"}", "cannot be read"),
    ],
)
def test_hostile_json_is_a_400_not_a_crash(body, why):
    for ctype in ("application/json", "application/octet-stream"):
        with pytest.raises(BadInputError, match=why) as refused:
            parse({"body": body}, {"Content-Type": ctype})
        assert refused.value.status_code == 400


def test_a_huge_topk_is_a_400():
    with pytest.raises(BadInputError, match="positive integer"):
        parse({"body": b"\xff\xd8", "topk": "9" * 5000})
