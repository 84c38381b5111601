"""The admin drives graft's KServe runtime: load beside the champion, smoke test, promote, roll back, retire,
replay, first through the Rollout itself, then through the admin's Promoter with a real registry file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.metrics import AdminMetrics
from admin.rollouts.base import DefaultAware, Replayable, SmokeTestable
from admin.rollouts.kserve import KServeRollout
from graft.core.errors import ConflictError, UpstreamError
from tests.kserve.runtime import Runtime, kserve_runtime
from tests.support.artifacts import LABELS, images

pytestmark = [pytest.mark.slow]

MODEL = "antsbees"


@pytest.fixture
def runtime(serving_artifacts: tuple[Path, Path], tmp_path: Path) -> Iterator[Runtime]:
    _, store = serving_artifacts
    # Only version 1 in service at the start, as after an adoption: the admin brings version 2.
    with kserve_runtime(store, tmp_path / "kserve", "--only", f"{MODEL}=1") as rt:
        yield rt


def _answering(rt: Runtime) -> str:
    jpeg = images("val", 1)[0][0].read_bytes()
    import base64

    with rt.client() as c:
        r = c.post(f"/v1/models/{MODEL}:predict", json={"data": base64.b64encode(jpeg).decode()})
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_rollout_loads_promotes_rolls_back_and_retires(runtime: Runtime, serving_artifacts: tuple[Path, Path]) -> None:
    _, store = serving_artifacts
    ro = KServeRollout(runtime.url, runtime.key_file, timeout_s=120, drain_timeout_s=10)
    assert isinstance(ro, SmokeTestable) and isinstance(ro, DefaultAware) and isinstance(ro, Replayable)
    smoke = [p for p, _ in images("val", 1)]
    try:
        assert ro.ping() and ro.versions(MODEL) == ["1"] and ro.default_version(MODEL) == "1"
        ro.deploy(MODEL, "2", store / f"{MODEL}-2.mar")
        assert ro.versions(MODEL) == ["1", "2"] and ro.default_version(MODEL) == "1"  # deploy never promotes
        ro.deploy(MODEL, "2", store / f"{MODEL}-2.mar")  # idempotent
        ro.smoke_test(MODEL, "2", smoke, LABELS)
        with pytest.raises(UpstreamError, match="unknown label"):
            ro.smoke_test(MODEL, "2", smoke, ["cats", "dogs"])  # the check can fail
        top = ro.predict(MODEL, "2", smoke[0].read_bytes())
        assert {label for label, _ in top} == set(LABELS) and top[0][1] >= top[1][1]
        assert _answering(runtime) == "1"
        ro.set_default(MODEL, "2")
        assert ro.default_version(MODEL) == "2" and _answering(runtime) == "2"
        with pytest.raises(ConflictError):
            ro.retire(MODEL, "2")  # never the default
        ro.set_default(MODEL, "1")  # rollback
        assert _answering(runtime) == "1"
        ro.retire(MODEL, "2")
        assert ro.versions(MODEL) == ["1"]
        with pytest.raises(UpstreamError, match="404"):
            ro.deploy(MODEL, "9", store / f"{MODEL}-9.mar")  # not in the store
    finally:
        ro.close()


def test_a_wrong_management_key_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text('{"inference": {"key": "x"}, "management": {"key": "y"}}')
    ro = KServeRollout(runtime.url, bad, timeout_s=30)
    try:
        with pytest.raises(UpstreamError, match="401"):
            ro.deploy(MODEL, "2", Path("unused.mar"))
    finally:
        ro.close()
    with httpx.Client(base_url=runtime.url) as c:  # nothing was loaded
        assert c.get(f"/graft/v1/models/{MODEL}", headers=runtime.headers(management=True)).json()["versions"] == ["1"]


def test_the_admin_promoter_promotes_and_rolls_back_on_kserve(runtime: Runtime, serving_artifacts: tuple[Path, Path],
                                                             tmp_path: Path) -> None:  # fmt: skip
    from admin.domain.promotion import Promoter
    from admin.store.db import Database
    from admin.store.registry import Registry

    _, store = serving_artifacts
    registry = Registry(Database(tmp_path / "state" / "graft.db"), store, MODEL)
    for version in ("1", "2"):
        registry.create(version, status="accepted", source="import", mar_path=store / f"{MODEL}-{version}.mar",
                        labels=LABELS)  # fmt: skip
    registry.record_default("1", "import")
    ro = KServeRollout(runtime.url, runtime.key_file, timeout_s=120, drain_timeout_s=10)
    promoter = Promoter(registry, ro, AdminMetrics(), keep_versions=2)
    smoke = [p for p, _ in images("val", 1)]
    phases: list[str] = []
    try:
        promoter.put_in_service("2", "promote", smoke, on_phase=phases.append)
        assert phases == ["exporting", "deploying", "smoke_test", "switching"]
        assert ro.default_version(MODEL) == "2" and _answering(runtime) == "2"
        promoter.put_in_service("1", "rollback", smoke)
        assert registry.default_version() == "1" and ro.default_version(MODEL) == "1" and _answering(runtime) == "1"
        # Versions outside the registry's keep set were retired on the runtime too (after this rollback: only 1).
        assert ro.versions(MODEL) == sorted(registry.keep_set(2)) == ["1"]
    finally:
        ro.close()
