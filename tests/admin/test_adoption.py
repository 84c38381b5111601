"""Adoption: the admin knows which model it manages, takes the one in the store as its champion when the
registry is empty, finds its base data from the card, and says when it cannot (real SQLite, real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.domain.adoption import ServingPlan, arrange_store, serving_plan
from admin.server import AdminServer, dev_token_file
from admin.settings import AdminSettings
from graft.core.errors import ConfigError
from tests.support.auth import ADMIN, ADMIN_TOKEN
from tests.support.fakes import (
    FAKE_TRAINER,
    FakeRollout,
    card_mar,
    fake_evaluate,
    placeholder_export,
    write_toy_card,
)
from tests.support.images import image_folder, png
from tests.support.waiting import wait_for, wait_job, wait_ready


def settings(tmp_path: Path, port: int = 0, **overrides: Any) -> AdminSettings:
    values: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN, "admin_port": port, "state_dir": tmp_path / "state",
        "model_store": tmp_path / "store", "job_poll_s": 0.1, "gate_min_holdout": 1,
    }  # fmt: skip
    values.update(overrides)
    return AdminSettings(**values)


def toy_archive(tmp_path: Path, name: str, version: str, dataset: Path | None = None) -> Path:
    run = tmp_path / "runs" / f"{name}-{version}"
    write_toy_card(run, ["ants", "bees"], 0.6, dataset_path=dataset)
    return card_mar(run, tmp_path / "store", name, version)


@pytest.fixture
def serve(tmp_path: Path, free_port: int) -> Iterator[Any]:
    """Start an admin with these settings overrides; yields (server, client) pairs, stops them all."""
    started: list[tuple[AdminServer, httpx.Client]] = []

    def start(**overrides: Any) -> tuple[AdminServer, httpx.Client]:
        from admin.runners.local import LocalJobRunner

        st = settings(tmp_path, free_port, **overrides)
        runner = LocalJobRunner(command=FAKE_TRAINER, env={"GRAFT_FAKE_QUALITY": "0.9"})
        extra = {"evaluate": fake_evaluate, "export": placeholder_export}
        server = AdminServer(st, rollout=FakeRollout(), runner=runner, app_kwargs=extra).start()
        client = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.stop()


def test_the_one_model_in_the_store_is_adopted_with_its_card_and_base_data(tmp_path: Path, serve: Any) -> None:
    base = image_folder(tmp_path / "base", {"train": 3, "val": 4})
    toy_archive(tmp_path, "ab", "1")
    toy_archive(tmp_path, "ab", "3", dataset=base)
    _, api = serve()
    wait_ready(api)
    ready = api.get("/readyz").json()
    assert ready["model_name"] == "ab" and ready["default_version"] == "3" and ready["warnings"] == []
    models = api.get("/v1/models").json()
    (m,) = models["models"]
    assert (models["model_name"], m["version"], m["source"], m["default"]) == ("ab", "3", "import", True)
    assert m["metrics"]["training"]["val_accuracy"] == 0.6 and m["labels"] == ["ants", "bees"]
    assert (tmp_path / "state" / "models" / "ab-3" / "model.json").is_file(), "the card was unpacked for the gate"
    job = wait_job(api, api.post("/v1/retrain").json()["job_id"])
    # the base data was adopted: its 8 validation images are the holdout, but the champion chose its best epoch
    # on them, so they cannot judge it (the fair holdout); with no samples yet there is nothing fair to judge on
    assert job["status"] == "rejected" and job["gate"]["left_out"] == 8, job["reason"]
    assert "only 0 fair holdout image(s) (8 left out" in job["reason"]
    assert "no labelled samples arrived" in job["reason"]
    assert "base data" not in job["reason"]


def test_without_readable_base_data_it_serves_and_says_so(tmp_path: Path, serve: Any) -> None:
    toy_archive(tmp_path, "ab", "1", dataset=tmp_path / "gone")
    _, api = serve(gate_min_holdout=1)
    wait_ready(api)
    (warning,) = api.get("/readyz").json()["warnings"]
    assert "gone" in warning and "collected samples only" in warning
    for seed, label in ((1, "ants"), (2, "bees"), (3, "ants"), (4, "bees")):
        from tests.support.images import png

        files = {"file": ("x.png", png(seed), "image/png")}
        assert api.post("/v1/samples", files=files, data={"label": label}).status_code == 201
    job = wait_job(api, api.post("/v1/retrain").json()["job_id"])
    assert "collected samples only" in job["reason"], job["reason"]


def test_not_ready_until_a_model_appears_then_adopts_it(tmp_path: Path, serve: Any) -> None:
    (tmp_path / "store").mkdir()
    _, api = serve()
    r = api.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["champion"] is False
    assert "no model in service" in r.json()["detail"] and "graft export" in r.json()["detail"]
    toy_archive(tmp_path, "late", "1")
    wait_for(lambda: api.get("/readyz").status_code == 200, 30, 0.2, "adoption of the archive that appeared")
    assert api.get("/v1/models").json()["model_name"] == "late"


def test_ambiguous_or_unknown_model_names_are_refused(tmp_path: Path, free_port: int) -> None:
    toy_archive(tmp_path, "ants", "1")
    toy_archive(tmp_path, "wasps", "2")
    with pytest.raises(ConfigError, match="several models") as refused:
        AdminServer(settings(tmp_path, free_port))
    assert "ants" in str(refused.value) and "wasps" in str(refused.value) and "--model-name" in str(refused.value)
    with pytest.raises(ConfigError, match="not in the model store"):
        AdminServer(settings(tmp_path, free_port, model_name="bees"))
    server = AdminServer(settings(tmp_path, free_port, model_name="wasps", rollout="none"))
    server.start().stop()
    with pytest.raises(ConfigError, match="manages model 'wasps'"):
        AdminServer(settings(tmp_path, free_port, model_name="ants"))


def test_the_serving_plan_keeps_the_default_and_its_rollback_targets(tmp_path: Path, serve: Any) -> None:
    toy_archive(tmp_path, "ab", "1", dataset=image_folder(tmp_path / "base", {"train": 3, "val": 2}))
    server, api = serve()
    wait_ready(api)
    for i in range(20):  # samples: some land in the holdout, which judges v2 against v1 (v1 chose on base/val)
        files = {"file": (f"s{i}.png", png(900 + i), "image/png")}
        assert api.post("/v1/samples", files=files, data={"label": "ants" if i % 2 else "bees"}).status_code == 201
    for _ in range(2):
        job = wait_job(api, api.post("/v1/retrain").json()["job_id"])
        assert job["status"] == "succeeded", job["reason"]
    server.stop()
    st = settings(tmp_path, keep_versions=2)
    plan = serving_plan(st, adopt_first=False)
    assert plan == ServingPlan("ab", "3", ["3", "2"], ["1", "2", "3"])
    for v in ("2", "3"):
        (tmp_path / "store" / f"ab-{v}.mar").write_bytes(b"placeholder")
    assert arrange_store(st, plan) == []
    assert sorted(p.name for p in (tmp_path / "store").glob("*.mar")) == ["ab-2.mar", "ab-3.mar"]
    assert [p.name for p in st.archive_path.iterdir()] == ["ab-1.mar"]
    assert arrange_store(st, ServingPlan("ab", "3", ["3", "1"], ["1", "2", "3"])) == []
    assert (tmp_path / "store" / "ab-1.mar").is_file(), "a rollback target comes back from the archive"


def test_a_development_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = dev_token_file(tmp_path / "state")
    token = path.read_text().strip()
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert dev_token_file(tmp_path / "state").read_text().strip() == token, "reused, not replaced"
    assert AdminSettings(admin_token_file=path).resolved_admin_token() == token


def test_copies_of_the_adopted_base_data_go_where_their_originals_are(tmp_path: Path, serve: Any) -> None:
    """The admin indexes the base data it adopted, both splits: a re-encoded copy of a base training picture stays
    in training and one of a base validation picture (the holdout) stays holdout, whatever their own hashes say."""
    import io

    from PIL import Image

    base = image_folder(tmp_path / "base", {"train": 2, "val": 2})
    toy_archive(tmp_path, "ab", "1", dataset=base)

    def jpeg(path: Path) -> bytes:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, "JPEG", quality=80)
        return buf.getvalue()

    for fraction, original in ((0.999, base / "train" / "ants" / "train_ants_1.png"),
                               (0.001, base / "val" / "bees" / "val_bees_0.png")):  # fmt: skip
        server, api = serve(holdout_fraction=fraction, state_dir=tmp_path / f"state-{fraction}")
        wait_ready(api)
        r = api.post("/v1/samples", files={"file": ("copy.jpg", jpeg(original), "image/jpeg")}, data={"label": "ants"})
        assert r.status_code == 201, r.text
        want = "train" if fraction > 0.5 else "holdout"
        assert (r.json()["split"], r.json()["split_reason"]) == (want, f"near-duplicate of base:{original.name}")
        server.stop()
