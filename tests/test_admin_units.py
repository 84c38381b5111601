"""Unit tests of the control plane's own logic: labels, images, split, store, gate, registry, settings."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from PIL import Image
from pydantic import SecretStr

from admin.auth import TokenAuth
from admin.dataset import Item, base_items, take_snapshot
from admin.db import Database
from admin.gate import decide, score
from admin.jobs import recipe, smoke_images
from admin.registry import Registry
from admin.samples import SampleStore, inspect_image, split_for, validate_label, write_atomic
from admin.settings import AdminSettings, load_settings
from admin.torchserve import _labels_in, _parse_expiry
from graft.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    EmptyBodyError,
    InvalidSampleError,
    NotAnImageError,
    NotFoundError,
    PermissionDeniedError,
    TooManyPixelsError,
    TruncatedImageError,
    UpstreamError,
)

TOKEN = "admin-token-0123456789abcdef"
SAMPLES = "samples-token-0123456789abcdef"


def image_bytes(
    color: tuple[int, int, int] = (200, 10, 10), fmt: str = "JPEG", size: tuple[int, int] = (16, 12)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- labels and images


@pytest.mark.parametrize("label", ["ants", "bees", "Grey heron", "classe-2", "été", "a" * 64])
def test_good_labels_pass(label: str) -> None:
    assert validate_label(label) == label


@pytest.mark.parametrize(
    ("label", "why"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "empty"),
        (" ants", "whitespace"),
        ("ants/../../etc", "path separator"),
        ("a\\b", "path separator"),
        ("..", "path separator"),
        ("ants\x00", "control"),
        ("ants\nbees", "control"),
        ("a\u200bb", "control"),  # zero-width space: invisible
        ("a" * 65, "characters long"),
    ],
)
def test_bad_labels_are_refused_with_the_reason(label: str | None, why: str) -> None:
    with pytest.raises(InvalidSampleError, match=why):
        validate_label(label)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_supported_formats_decode(fmt: str) -> None:
    info = inspect_image(image_bytes(fmt=fmt), max_pixels=10_000)
    assert (info.format, info.width, info.height) == (fmt, 16, 12)


def test_bad_images_get_typed_errors() -> None:
    with pytest.raises(EmptyBodyError):
        inspect_image(b"", 10_000)
    with pytest.raises(NotAnImageError):
        inspect_image(b"%PDF-1.4 definitely not an image" * 10, 10_000)
    jpeg = image_bytes(size=(64, 64))
    with pytest.raises(TruncatedImageError):
        inspect_image(jpeg[: len(jpeg) // 2], 10_000)
    with pytest.raises(TooManyPixelsError):
        inspect_image(image_bytes(size=(200, 200)), 10_000)
    assert NotAnImageError.status_code == 415 and TooManyPixelsError.status_code == 413


def test_split_is_a_pure_function_of_the_hash_with_the_asked_fraction() -> None:
    import hashlib

    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_for(h, 0.2) for h in hashes]
    assert splits == [split_for(h, 0.2) for h in hashes]
    assert 0.17 < splits.count("holdout") / len(splits) < 0.23
    assert split_for("0" * 64, 0.2) == "holdout" and split_for("f" * 64, 0.2) == "train"


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    write_atomic(target, b"x" * 100)
    write_atomic(target, b"y" * 10)
    assert target.read_bytes() == b"y" * 10
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


# --------------------------------------------------------------------------- the sample store


@pytest.fixture
def store(tmp_path: Path) -> SampleStore:
    return SampleStore(Database(tmp_path / "db.sqlite3"), tmp_path, holdout_fraction=0.3, max_image_pixels=10_000)


def test_store_is_content_addressed_and_recognises_duplicates(store: SampleStore) -> None:
    data = image_bytes()
    first = store.add(data, "ants")
    again = store.add(data, "ants")
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert first.split == split_for(first.id, 0.3)
    files = list((store.root / "samples").rglob("*.jpg"))
    assert [f.stem for f in files] == [first.id]
    assert store.counts() == {"ants": {"train": int(first.split == "train"), "holdout": int(first.split == "holdout")}}
    with pytest.raises(ConflictError, match="already stored"):
        store.add(data, "bees")


def test_store_survives_concurrent_uploads_of_the_same_bytes(store: SampleStore) -> None:
    data = image_bytes((1, 2, 3), "PNG")
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.add(data, "ants"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1 and len(results) == 8
    assert store.db.one("SELECT COUNT(*) AS n FROM samples")["n"] == 1  # type: ignore[index]


def test_snapshot_keeps_base_split_for_reposted_base_images(tmp_path: Path, store: SampleStore) -> None:
    base = tmp_path / "base"
    for split in ("train", "val"):
        for label, color in (("ants", (250, 0, 0)), ("bees", (0, 0, 250))):
            d = base / split / label
            d.mkdir(parents=True)
            shade = 0 if split == "train" else 100
            (d / "x.png").write_bytes(image_bytes((color[0], shade, color[2]), "PNG"))
    items = base_items(base, None, 0.2)
    assert sorted((i.label, i.split) for i in items) == [
        ("ants", "holdout"),
        ("ants", "train"),
        ("bees", "holdout"),
        ("bees", "train"),
    ]
    # Post a base holdout image again as a sample: whatever its hash split says, it stays holdout.
    val_ants = (base / "val" / "ants" / "x.png").read_bytes()
    store.add(val_ants, "ants")
    store.add(image_bytes((9, 9, 9)), "bees")
    snap = take_snapshot(store, items)
    assert len(snap.items) == 5 and snap.num_samples == 2
    assert sum(1 for i in snap.items if i.split == "holdout" and i.label == "ants") == 1
    assert snap.labels == ["ants", "bees"]


# --------------------------------------------------------------------------- the gate


def test_gate_compares_on_shared_labels_and_reports_new_ones() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    champion = ["a", "a", "b", "a", "a", "a"]  # knows a, b: 3/4 on shared
    candidate = ["a", "a", "b", "b", "c", "a"]  # knows a, b, c: 4/4 on shared
    d = decide(truth, candidate, ["a", "b", "c"], champion, ["a", "b"])
    assert d.passed and d.candidate.n == 4 and d.candidate.accuracy == 1.0 and d.champion is not None
    assert d.champion.accuracy == 0.75 and d.new_labels == ["c"] and d.shared_labels == ["a", "b"]
    assert d.candidate_all.n == 6 and d.candidate_all.correct == 5
    assert "1.0000 (4/4)" in d.reason and "0.7500 (3/4)" in d.reason and "c" in d.reason


def test_gate_tolerance_floor_and_ties() -> None:
    truth = ["a"] * 10 + ["b"] * 10
    good = list(truth)
    worse = ["a"] * 10 + ["b"] * 9 + ["a"]  # 0.95
    tie = decide(truth, good, ["a", "b"], good, ["a", "b"])
    assert tie.passed, "not lower = promoted (tolerance 0)"
    drop = decide(truth, worse, ["a", "b"], good, ["a", "b"])
    assert not drop.passed and "lower than champion 1.0000 (20/20) by 0.0500" in drop.reason
    assert decide(truth, worse, ["a", "b"], good, ["a", "b"], tolerance=0.05).passed
    assert not decide(truth, worse, ["a", "b"], good, ["a", "b"], tolerance=0.049).passed
    floor = decide(truth, worse, ["a", "b"], None, None, floor=0.96)
    assert not floor.passed and "below the floor 0.9600" in floor.reason
    first = decide(truth, worse, ["a", "b"], None, None, floor=0.9)
    assert first.passed and "no champion" in first.reason


def test_gate_needs_evidence() -> None:
    d = decide(["x"], ["x"], ["a", "b"], ["a"], ["a", "b"], min_holdout=1)
    assert not d.passed and "only 0 holdout" in d.reason
    assert score(["a", "b"], [None, "b"], {"a", "b"}).correct == 1  # unreadable counts as wrong


# --------------------------------------------------------------------------- the registry


def test_registry_rollback_walks_back_through_history(tmp_path: Path) -> None:
    reg = Registry(Database(tmp_path / "db.sqlite3"), tmp_path / "store", "m")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "m-7.mar").write_bytes(b"x")
    assert reg.next_version() == "8", "a .mar already in the store reserves its version"
    for v in ("1", "2", "3"):
        reg.create(v, status="accepted", source="job")
    with pytest.raises(ConflictError):
        reg.rollback_target()
    reg.record_default("1", "import")
    reg.record_default("2", "promote")
    reg.record_default("3", "promote")
    assert reg.keep_set(2) == ["3", "2"] and reg.keep_set(5) == ["3", "2", "1"]
    assert reg.rollback_target() == "2"
    reg.record_default("2", "rollback")
    assert reg.default_version() == "2" and reg.rollback_target() == "1"
    reg.record_default("1", "rollback")
    with pytest.raises(ConflictError, match="first default"):
        reg.rollback_target()
    with pytest.raises(NotFoundError):
        reg.get("99")
    with pytest.raises(ConflictError):
        reg.create("1", status="accepted", source="job")


# --------------------------------------------------------------------------- settings and tokens


def test_settings_refuse_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("GRAFT_ADMIN_TOKEN", "GRAFT_ADMIN_TOKEN_FILE", "GRAFT_SAMPLES_TOKEN", "GRAFT_INSECURE_DEV"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="no admin token"):
        AdminSettings().check()
    AdminSettings(insecure_dev=True).check()
    with pytest.raises(ConfigError, match="shorter"):
        AdminSettings(admin_token=SecretStr("short")).check()
    with pytest.raises(ConfigError, match="differ"):
        AdminSettings(admin_token=SecretStr(TOKEN), samples_token=SecretStr(TOKEN)).check()
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert AdminSettings(admin_token_file=secret).resolved_admin_token() == TOKEN
    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("GRAFT_GATE_TOLERANCE", "0.02")
    s = load_settings(admin_port=9999, gate_floor=None)
    assert s.resolved_admin_token() == TOKEN and s.gate_tolerance == 0.02 and s.admin_port == 9999
    with pytest.raises(ConfigError, match="invalid admin settings"):
        load_settings(holdout_fraction=1.5)


def test_token_auth_roles() -> None:
    auth = TokenAuth(TOKEN, SAMPLES)
    assert auth.check(TOKEN, samples_ok=False) == "admin"
    assert auth.check(SAMPLES, samples_ok=True) == "samples"
    with pytest.raises(PermissionDeniedError):
        auth.check(SAMPLES, samples_ok=False)
    for bad in (None, "", TOKEN[:-1], TOKEN + "x", "Basic abc"):
        with pytest.raises(AuthenticationError):
            auth.check(bad, samples_ok=True)
    assert TokenAuth(TOKEN, None).check(TOKEN, samples_ok=True) == "admin"
    with pytest.raises(AuthenticationError):
        TokenAuth(TOKEN, None).check("\0" * 32, samples_ok=True)  # the dummy compare value is no token
    assert TokenAuth(None, None, insecure=True).check(None, samples_ok=False) == "insecure"


# --------------------------------------------------------------------------- helpers of jobs and rollout


def test_recipe_layers_champion_settings_and_request() -> None:
    champion = {
        "recipe": {"backbone": "mobilenet_v2", "weights": "/w.pth", "lr": 0.001, "freeze_until": None,
                   "stages": ["a"], "phases": [{}], "pretrained": {"source": "x"}, "amp": True, "augment": False},
        "lineage": {"pretrained_weights": "/w.pth (sha256:...)"},
    }  # fmt: skip
    out = recipe({"epochs": 3, "trainable_stages": 0}, champion, {"epochs": 5, "overrides": {"lr": 0.01}})
    assert out == {"backbone": "mobilenet_v2", "weights": "/w.pth", "epochs": 5, "trainable_stages": 0, "lr": 0.01}
    assert recipe({}, champion, {})["lr"] == 0.001, "the champion's recipe is replayed"
    assert recipe({}, None, {}) == {}


def test_smoke_images_spread_over_labels(tmp_path: Path) -> None:
    items = []
    for label in ("a", "b"):
        for i in range(3):
            p = tmp_path / f"{label}{i}.jpg"
            p.write_bytes(b"x")
            items.append(Item(p, label, "val"))
    picked = smoke_images([*items, Item(tmp_path / "gone.jpg", "a", "val")], ["a", "b"], 3)
    assert [p.name for p in picked] == ["a0.jpg", "b0.jpg", "a1.jpg"]
    assert smoke_images(items, ["c"], 3) == []


def test_torchserve_helpers() -> None:
    expiry = _parse_expiry("2026-11-28T01:07:40.878181916Z")
    assert expiry is not None and expiry.microsecond == 878181 and expiry.tzinfo is not None
    assert _parse_expiry("garbage") is None
    body = {"predictions": [[{"label": "ants", "score": 0.9}, {"label": "bees", "score": 0.1}]], "model": "x"}
    assert sorted(_labels_in(body)) == ["ants", "bees"]


def test_rejected_torchserve_key_is_renewed_and_the_call_retried(tmp_path: Path) -> None:
    """TorchServe answers a stale key with 400 InvalidKeyException: renew with the API key, retry once."""
    import json

    import httpx

    from admin.torchserve import TorchServeRollout

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
    ro = TorchServeRollout("http://ts:8081", "http://ts:8080", key_file, client=client)
    assert ro.versions("m") == ["3"]
    assert seen == [("/models/m/all", "Bearer stale"), ("/token", "Bearer api-key"), ("/models/m/all", "Bearer fresh")]
    seen.clear()
    write("revoked")  # a key nobody can renew: one renewal attempt, then the 400 stands
    client2 = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(400, text="InvalidKeyException")))
    ro2 = TorchServeRollout("http://ts:8081", "http://ts:8080", key_file, client=client2)
    with pytest.raises(UpstreamError, match="refused to renew"):
        ro2.versions("m")
