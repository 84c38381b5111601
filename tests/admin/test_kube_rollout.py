"""The Kubernetes rollout, driven through the real ``kubernetes`` client against a fake API server.

Checks the exact strategic-merge patch sent to the inference Deployment, the wait for the rolling
update, and the restore of the previous pod template when a rollout stalls or times out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from admin.cluster import KubeConfig
from admin.rollouts.kubernetes import KubernetesRollout
from graft.core.errors import ArtifactError, ConflictError, NotFoundError, RolloutError, UserInputError
from tests.support.fake_kube import FakeKube, FakeServer, api_client, deployment, fake_config, mar

SMP = "application/strategic-merge-patch+json"


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube(deployment=deployment())


@pytest.fixture
def cfg(tmp_path: Path) -> KubeConfig:
    return fake_config(tmp_path)


@pytest.fixture
def rollout(fake: FakeKube, cfg: KubeConfig) -> Iterator[KubernetesRollout]:
    mar(cfg.model_store_dir / "graft-1.mar", version="1")
    ticks = iter(range(10_000))
    with FakeServer(fake) as url, api_client(url) as c:
        yield KubernetesRollout(c, cfg, sleep=lambda s: None, clock=lambda: float(next(ticks)))


def env_of(fake: FakeKube) -> str:
    assert fake.deployment is not None
    container = fake.deployment["spec"]["template"]["spec"]["containers"][0]
    return next(e["value"] for e in container["env"] if e["name"] == "GRAFT_DEFAULT_VERSIONS")


def test_deploy_copies_the_mar_pins_the_champion_and_rolls(
    fake: FakeKube, rollout: KubernetesRollout, cfg: KubeConfig, tmp_path: Path
) -> None:
    rollout.deploy("graft", "2", mar(tmp_path / "candidate.mar"))

    assert (cfg.model_store_dir / "graft-2.mar").read_bytes() == (tmp_path / "candidate.mar").read_bytes()
    (patch,) = fake.calls("PATCH")
    assert patch.path == "/apis/apps/v1/namespaces/graft/deployments/graft-inference"
    assert patch.content_type == SMP
    revision = patch.body["spec"]["template"]["metadata"]["annotations"]["graft.io/model-store"]
    assert revision.startswith("sha256:")
    assert patch.body == {
        "spec": {
            "template": {
                "metadata": {"annotations": {"graft.io/default-versions": "graft=1", "graft.io/model-store": revision}},
                "spec": {
                    "containers": [
                        {"name": "torchserve", "env": [{"name": "GRAFT_DEFAULT_VERSIONS", "value": "graft=1"}]}
                    ]
                },
            }
        }
    }
    # It waited for the rolling update: reads after the patch until every replica was updated.
    assert len([r for r in fake.calls("GET") if "deployments" in r.path]) >= 1 + 3
    assert rollout.versions("graft") == ["1", "2"]
    assert rollout.default_version("graft") == "1"


def test_set_default_changes_the_pin_and_keeps_other_env(
    fake: FakeKube, rollout: KubernetesRollout, tmp_path: Path
) -> None:
    rollout.deploy("graft", "2", mar(tmp_path / "c.mar"))
    rollout.set_default("graft", "2")
    assert env_of(fake) == "graft=2"
    assert fake.calls("PATCH")[-1].body["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "GRAFT_DEFAULT_VERSIONS", "value": "graft=2"}
    ]
    assert fake.deployment is not None
    assert {"name": "HOME", "value": "/var/run/graft"} in fake.deployment["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert rollout.default_version("graft") == "2"


def test_set_default_of_an_unknown_version_sends_nothing(fake: FakeKube, rollout: KubernetesRollout) -> None:
    with pytest.raises(NotFoundError):
        rollout.set_default("graft", "7")
    assert fake.calls("PATCH") == []


def test_a_stalled_rollout_restores_the_template_and_drops_the_candidate(
    fake: FakeKube, rollout: KubernetesRollout, cfg: KubeConfig, tmp_path: Path
) -> None:
    fake.rollout_mode = "stall"
    with pytest.raises(RolloutError, match=r"ProgressDeadlineExceeded|timed out"):
        rollout.deploy("graft", "2", mar(tmp_path / "c.mar"))
    first, restore = fake.calls("PATCH")
    assert first.body["spec"]["template"]["metadata"]["annotations"]["graft.io/model-store"].startswith("sha256:")
    assert restore.body["spec"]["template"]["metadata"]["annotations"] == {
        "graft.io/default-versions": "",
        "graft.io/model-store": "",
    }
    assert not (cfg.model_store_dir / "graft-2.mar").exists()
    assert rollout.versions("graft") == ["1"]


def test_a_rollout_that_never_finishes_times_out(fake: FakeKube, rollout: KubernetesRollout, tmp_path: Path) -> None:
    rollout.deploy("graft", "2", mar(tmp_path / "c.mar"))
    fake.rollout_mode = "hang"
    with pytest.raises(RolloutError, match="not finished after 5s"):
        rollout.set_default("graft", "2")
    assert env_of(fake) == "graft=1"  # restored


def test_retire_refuses_the_default_and_removes_others(
    rollout: KubernetesRollout, cfg: KubeConfig, tmp_path: Path
) -> None:
    rollout.deploy("graft", "2", mar(tmp_path / "c.mar"))
    with pytest.raises(ConflictError, match="default"):
        rollout.retire("graft", "1")
    rollout.retire("graft", "2")
    assert rollout.versions("graft") == ["1"]


def test_versions_are_in_natural_order_and_per_model(rollout: KubernetesRollout, cfg: KubeConfig) -> None:
    for name in ("graft-10.mar", "graft-2.mar", "graft-x-2.mar", "other-3.mar"):
        mar(cfg.model_store_dir / name)
    assert rollout.versions("graft") == ["1", "2", "10"]


def test_deploy_refuses_what_is_not_a_model_archive(fake: FakeKube, rollout: KubernetesRollout, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mar"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError):
        rollout.deploy("graft", "2", junk)
    with pytest.raises(UserInputError):
        rollout.deploy("graft", "../2", mar(tmp_path / "c.mar"))
    assert fake.calls("PATCH") == []
