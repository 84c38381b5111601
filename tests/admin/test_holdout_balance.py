"""The balanced split: each label's holdout stays within one image of its share, and a picture is placed once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from admin.domain.samples import BALANCED_SPLIT, HASH_SPLIT, SampleIntake, StoredSample, Upload, balance, split_for
from admin.server import AdminServer
from admin.settings import load_settings
from graft.core.errors import ConfigError
from graft.core.images import fingerprint
from tests.admin.test_api import settings
from tests.admin.test_samples import make_intake
from tests.support.auth import ADMIN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import photo
from tests.support.waiting import wait_ready


def _off_share(labels: Sequence[str], splits: Sequence[str], fraction: float) -> float:
    """The furthest any label's holdout got from its share, after each item."""
    held: dict[str, int] = {}
    seen: dict[str, int] = {}
    worst = 0.0
    for label, split in zip(labels, splits, strict=True):
        seen[label] = seen.get(label, 0) + 1
        held[label] = held.get(label, 0) + (split == "holdout")
        worst = max(worst, abs(held[label] - fraction * seen[label]))
    return worst


def test_balance_keeps_each_label_within_one_image_of_its_share() -> None:
    rng = random.Random(0)
    labels = [rng.choice("abc") for _ in range(300)]
    leaning = [(label, "holdout" if rng.random() < 0.5 else "train", True) for label in labels]  # a hash at 50%
    out = balance(leaning, {}, 0.2)  # type: ignore[arg-type]
    assert _off_share(labels, out, 0.2) <= 1
    assert _off_share(labels, [w for _, w, _ in leaning], 0.2) > 10, "the hash alone drifts (not vacuous)"
    fair = [(label, split_for(f"{rng.getrandbits(256):064x}", 0.2), True) for label in labels]
    moved = sum(s != w for (_, w, _), s in zip(fair, balance(fair, {}, 0.2), strict=True))  # type: ignore[arg-type]
    assert 0 < moved < 0.2 * len(fair), "a hash at the share's own rate decides most pictures"


def test_balance_counts_what_is_stored_and_never_moves_a_pinned_copy() -> None:
    stored = {"a": {"holdout": 0, "train": 20}, "b": {"holdout": 9, "train": 1}}
    # a: 4 images short, so a picture the hash trains on goes to the holdout; b: far over, so to training
    assert balance([("a", "train", True), ("b", "holdout", True)], stored, 0.2) == ["holdout", "train"]
    # a copy pinned to its twin's side stays there, and counts: the next free picture makes up for it
    assert balance([("b", "holdout", False), ("b", "holdout", True)], stored, 0.2) == ["holdout", "train"]
    # never further from the share: b is 7 over, and a picture the hash trains on stays in training
    assert balance([("b", "train", True)], stored, 0.2) == ["train"]
    # a new label's first picture follows the hash either way
    assert balance([("c", "holdout", True)], {}, 0.2) == ["holdout"]
    assert balance([("c", "train", True)], {}, 0.2) == ["train"]


def test_intake_balances_in_order_and_a_batch_places_as_single_uploads_would(tmp_path: Path) -> None:
    pictures = [photo(300 + k) for k in range(40)]
    labels = ["ants" if k % 3 else "bees" for k in range(40)]
    one_by_one = make_intake(tmp_path / "a", holdout_fraction=0.2)
    singles = [one_by_one.accept([Upload(f"{k}.png", p)], [label], True)[0]
               for k, (p, label) in enumerate(zip(pictures, labels, strict=True))]  # fmt: skip
    batch = make_intake(tmp_path / "b", holdout_fraction=0.2).accept(
        [Upload(f"{k}.png", p) for k, p in enumerate(pictures)], labels, True)  # fmt: skip
    assert [(s.split, s.split_reason) for s in singles] == [(s.split, s.split_reason) for s in batch]
    assert _off_share(labels, [s.split for s in batch], 0.2) <= 1
    for p, s in zip(pictures, batch, strict=True):  # each says why: its hash's side, or the other one
        by_hash = split_for(fingerprint(p).pixels_sha, 0.2)
        assert (s.split, s.split_reason) in {(by_hash, HASH_SPLIT)} | (
            {("holdout" if by_hash == "train" else "train", BALANCED_SPLIT)})
    assert any(s.split_reason == BALANCED_SPLIT for s in batch), "not vacuous: some were balanced"
    assert one_by_one.store.get(batch[0].id) is not None  # the same pictures, the same content addresses
    hashed = make_intake(tmp_path / "c", holdout_fraction=0.2, balanced=False)
    assert [s.split for s in hashed.accept([Upload(f"{k}.png", p) for k, p in enumerate(pictures)], labels, True)] \
        == [split_for(fingerprint(p).pixels_sha, 0.2) for p in pictures]  # fmt: skip


def test_a_balanced_picture_in_other_bytes_goes_where_it_went(tmp_path: Path) -> None:
    intake = make_intake(tmp_path, holdout_fraction=0.2)
    stored = intake.accept([Upload(f"{k}.png", photo(300 + k)) for k in range(40)], ["ants"], True)
    moved = [(k, s) for k, s in enumerate(stored) if s.split_reason == BALANCED_SPLIT]
    assert {s.split for _, s in moved} == {"holdout", "train"}, "both directions, or this proves less"
    for k, s in moved:
        copy = intake.accept([Upload(f"copy{k}.jpg", photo(300 + k, fmt="JPEG", quality=70))], ["ants"], True)[0]
        assert copy.split == s.split and copy.split_reason in (f"near-duplicate of {s.id}", HASH_SPLIT), k
    # copies of every holdout picture, one after another: the label's holdout grows far past its share, and a copy
    # the balance would move is found beside its twin first (its own hash sent it to the holdout side)
    more = intake.accept([Upload(f"{k}.png", photo(600 + k)) for k in range(60)], ["ants"], True)
    kept_by_own_side = 0
    for seed, s in [(600 + k, s) for k, s in enumerate(more) if s.split == "holdout"]:
        data = photo(seed, fmt="JPEG", quality=70)
        copy = intake.accept([Upload("copy.jpg", data)], ["ants"], True)[0]
        assert copy.split == "holdout" and copy.split_reason in (f"near-duplicate of {s.id}", HASH_SPLIT)
        own = split_for(fingerprint(data).pixels_sha, 0.2)
        kept_by_own_side += own == "holdout" and copy.split_reason.startswith("near-duplicate")
    assert kept_by_own_side >= 1, "not vacuous: a copy whose own hash says holdout was about to be moved"
    # in one request: a picture and its copy land together, whatever the balance did to either
    fresh = make_intake(tmp_path / "fresh", holdout_fraction=0.2)
    pairs = [Upload(f"{k}{kind}", photo(500 + k, fmt=kind.upper(), quality=70)) for k in range(20) for kind in
             ("png", "jpeg")]  # fmt: skip
    got = fresh.accept(pairs, ["bees"], True)
    assert all(got[2 * k].split == got[2 * k + 1].split for k in range(20))
    assert any(s.split_reason == BALANCED_SPLIT for s in got)


def _at_once(intake: SampleIntake, uploads: Sequence[Upload], label: str) -> list[StoredSample]:
    """Each upload its own request, all started together, with slow storage: without the intake's placement lock
    every request would choose its side before any other had stored its picture."""
    store_many = intake.store.add_many

    def slow(*args: object, **kw: object) -> list[StoredSample]:
        time.sleep(0.2)
        return store_many(*args, **kw)  # type: ignore[arg-type]

    intake.store.add_many = slow  # type: ignore[method-assign]
    start = threading.Barrier(len(uploads))
    got: dict[int, StoredSample] = {}

    def send(k: int) -> None:
        start.wait()
        got[k] = intake.accept([uploads[k]], [label], True)[0]

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(uploads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == len(uploads), "a request failed"
    return [got[k] for k in range(len(uploads))]


def test_requests_at_the_same_moment_see_each_other(tmp_path: Path) -> None:
    # a picture its hash sends to the holdout, and a copy in other bytes whose own hash says training
    seed = next(k for k in range(1000, 3000)
                if split_for(fingerprint(photo(k)).pixels_sha, 0.2) == "holdout"
                and split_for(fingerprint(photo(k, fmt="JPEG", quality=70)).pixels_sha, 0.2) == "train")  # fmt: skip
    pair = [Upload("a.png", photo(seed)), Upload("b.jpg", photo(seed, fmt="JPEG", quality=70))]
    first, copy = _at_once(make_intake(tmp_path / "pair", holdout_fraction=0.2), pair, "ants")
    assert first.split == copy.split, "one picture, one side: whichever request stored first"
    assert {first.split_reason, copy.split_reason} & {f"near-duplicate of {first.id}", f"near-duplicate of {copy.id}"}
    # ten pictures the hash sends to the holdout, each in its own request: the balance counts the others'
    held = [k for k in range(1000, 3000) if split_for(fingerprint(photo(k)).pixels_sha, 0.2) == "holdout"][:10]
    got = _at_once(make_intake(tmp_path / "ten", holdout_fraction=0.2), [Upload(f"{k}.png", photo(k)) for k in held],
                   "bees")  # fmt: skip
    assert 1 <= sum(s.split == "holdout" for s in got) <= 3, "within one image of 20% of 10"


def test_the_split_policy_is_a_setting_and_the_api_says_why(tmp_path: Path, free_port: int) -> None:
    assert load_settings(holdout_split="hash", insecure_dev=True).holdout_split == "hash"
    with pytest.raises(ConfigError, match="holdout_split"):
        load_settings(holdout_split="random", insecure_dev=True)
    st = settings(tmp_path, admin_port=free_port, holdout_fraction=0.2)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with (AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server,
          httpx.Client(base_url=server.url, timeout=30) as c):  # fmt: skip
        wait_ready(c)
        files = [("file", (f"{k}.png", photo(300 + k), "image/png")) for k in range(40)]
        r = c.post("/v1/samples/batch", files=files, data={"label": "ants"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        items = r.json()["items"]
        assert 7 <= sum(i["split"] == "holdout" for i in items) <= 9  # 8 is 20% of 40
        balanced = next(i for i in items if i["split_reason"] == BALANCED_SPLIT)
        assert c.get(f"/v1/samples/{balanced['id']}", headers=ADMIN).json()["split_reason"] == BALANCED_SPLIT


def test_the_service_passes_the_policy_to_the_intake(tmp_path: Path) -> None:
    from admin.domain.service import AdminService

    for policy, want in (("balanced", True), ("hash", False)):
        svc = AdminService(settings(tmp_path / policy, holdout_split=policy), rollout=FakeRollout())
        assert isinstance(svc.intake, SampleIntake) and svc.intake.balanced is want
