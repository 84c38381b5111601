"""The inference pod's exec probes (graft/torchserve/probe.py) against a fake TorchServe over HTTP.

Checked by hand against a real TorchServe 0.12 too: ``/ping`` answered "Healthy" for about 8 s while
the model's workers were still loading, and ``ready`` passed only once a worker was READY.
"""

from __future__ import annotations

import pytest

from graft.torchserve import probe as kube_probe
from tests.support.fake_kube import FakeServer, FakeTorchServe


@pytest.mark.parametrize(
    ("ping", "workers", "ready"),
    [
        (200, {"graft": ["READY"]}, True),
        (200, {"graft": ["UNLOADING", "READY"], "other": ["READY"]}, True),
        (200, {"graft": ["READY"], "other": ["STARTED"]}, False),  # /ping was Healthy, a model is not loaded
        (200, {}, False),  # no model registered at all
        (500, {"graft": ["READY"]}, False),
    ],
)
def test_readiness_needs_a_ready_worker_for_every_model(ping: int, workers: dict[str, list[str]], ready: bool) -> None:
    ts = FakeTorchServe(ping_status=ping, workers=workers)
    with FakeServer(ts) as url:
        assert kube_probe.main(["ready", "--inference", url, "--management", url]) == (0 if ready else 1)


def test_liveness_needs_the_frontend_to_answer_not_a_ready_worker() -> None:
    with FakeServer(FakeTorchServe(ping_status=500, workers={"graft": ["UNLOADING"]})) as url:
        assert kube_probe.main(["live", "--inference", url, "--management", url]) == 0
    assert kube_probe.main(["live", "--inference", url, "--management", url, "--timeout", "1"]) == 1  # gone
    with FakeServer(FakeTorchServe(workers={"graft": []})) as url:  # scaled to no worker: restart the pod
        assert kube_probe.main(["live", "--inference", url, "--management", url]) == 1


@pytest.mark.parametrize(("pins", "ready"), [("graft=1", True), ("graft=2", False), ("graft=1,other=3", False)])
def test_readiness_waits_for_the_pinned_default(monkeypatch: pytest.MonkeyPatch, pins: str, ready: bool) -> None:
    monkeypatch.setenv("GRAFT_DEFAULT_VERSIONS", pins)
    with FakeServer(FakeTorchServe(workers={"graft": ["READY"]})) as url:
        assert kube_probe.main(["ready", "--inference", url, "--management", url]) == (0 if ready else 1)


@pytest.mark.parametrize(("others", "ready"), [(["2"], False), (["0.9"], True), ([], True)])
def test_unpinned_readiness_waits_for_the_newest_as_default(others: list[str], ready: bool) -> None:
    """Without a pin graft serve makes the newest version the default, a moment after the workers are READY
    (seen in the image test: a pod ready too early answered with version 1 of 1 and 2)."""
    ts = FakeTorchServe(workers={"graft": ["READY"]}, other_versions={"graft": others})
    with FakeServer(ts) as url:
        assert kube_probe.main(["ready", "--inference", url, "--management", url]) == (0 if ready else 1)
