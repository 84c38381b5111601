"""The TorchServe rollout's own logic without a server: key expiry parsing, renewal and retry, labels in answers.

(The rollout against a real TorchServe is tests/admin/test_torchserve.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from admin.rollouts.torchserve import TorchServeRollout, labels_in
from graft.core.errors import UpstreamError
from graft.torchserve.client import parse_expiry


def test_torchserve_helpers() -> None:
    expiry = parse_expiry("2026-11-28T01:07:40.878181916Z")
    assert expiry is not None and expiry.microsecond == 878181 and expiry.tzinfo is not None
    assert parse_expiry("garbage") is None
    body = {"predictions": [[{"label": "ants", "score": 0.9}, {"label": "bees", "score": 0.1}]], "model": "x"}
    assert sorted(labels_in(body)) == ["ants", "bees"]


def test_rejected_torchserve_key_is_renewed_and_the_call_retried(tmp_path: Path) -> None:
    """TorchServe answers a stale key with 400 InvalidKeyException: renew with the API key, retry once."""
    key_file = tmp_path / "key_file.json"
    far = "2999-01-01T00:00:00.000000000Z"

    def write(mkey: str) -> None:
        doc = {"management": {"key": mkey, "expiration time": far}, "inference": {"key": "i", "expiration time": far}}
        key_file.write_text(json.dumps({**doc, "API": {"key": "api-key"}}))

    write("stale")
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        seen.append((request.url.path, auth))
        if request.url.path == "/token":
            assert auth == "Bearer api-key" and request.url.params["type"] == "management"
            write("fresh")  # what TorchServe does: a new key in its key file
            return httpx.Response(200)
        if auth != "Bearer fresh":
            return httpx.Response(400, json={"code": 400, "type": "InvalidKeyException", "message": "no"})
        return httpx.Response(200, json=[{"modelVersion": "3"}])

    client = httpx.Client(transport=httpx.MockTransport(handler))
    ro = TorchServeRollout("http://ts:8081", "http://ts:8080", key_file, http=client)
    assert ro.versions("m") == ["3"]
    assert seen == [("/models/m/all", "Bearer stale"), ("/token", "Bearer api-key"), ("/models/m/all", "Bearer fresh")]
    seen.clear()
    write("revoked")  # a key nobody can renew: one renewal attempt, then the 400 stands
    client2 = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(400, text="InvalidKeyException")))
    ro2 = TorchServeRollout("http://ts:8081", "http://ts:8080", key_file, http=client2)
    with pytest.raises(UpstreamError, match="refused to renew"):
        ro2.versions("m")


def test_smoke_tests_and_replays_carry_the_no_capture_key(tmp_path: Path) -> None:
    """The workers honour X-Graft-No-Capture only with the key in the capture folder (any client may send the
    header); the admin creates that key (0600) and its rollout sends it."""
    from admin.domain.service import build_rollout
    from admin.settings import AdminSettings
    from graft.core.capture import NO_CAPTURE_KEY_FILE

    st = AdminSettings(state_dir=tmp_path / "state", torchserve_inference_url="http://ts:8080")
    ro = build_rollout(st)
    key_file = st.capture_path / NO_CAPTURE_KEY_FILE
    assert isinstance(ro, TorchServeRollout) and key_file.stat().st_mode & 0o777 == 0o600
    assert ro.no_capture_key == key_file.read_text().strip() and len(ro.no_capture_key) >= 32
    assert build_rollout(st).no_capture_key == ro.no_capture_key, "created once, the same for every admin"  # type: ignore[union-attr]
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("x-graft-no-capture"))
        return httpx.Response(200, json={"predictions": [{"label": "ants", "score": 0.9}]})

    ro.client.close()
    mock = httpx.Client(transport=httpx.MockTransport(handler))
    ro = TorchServeRollout("http://ts:8081", "http://ts:8080", http=mock)
    ro.no_capture_key = "k" * 40
    assert ro.predict("m", "2", b"x") == [("ants", 0.9)]
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    ro.smoke_test("m", "2", [image], ["ants", "bees"])
    assert sent == ["k" * 40, "k" * 40]
