"""Scraping: the PodMonitors find the admin and either runtime's metrics port in the rendered overlays, and real
TorchServe and the real KServe runtime export every handler metric the dashboard and the alerts read."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_monitoring import MON, dashboard_exprs, metric_names, rule_exprs
from tests.support.paths import REPO

# ---------------------------------------------------------------------------------------------- scraping


def _render(overlay: str) -> list[dict[str, Any]]:
    from tests.deploy.test_manifests import DEPLOY, kustomize_cmd

    out = subprocess.run([*kustomize_cmd(), str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True,
                         check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _targets(monitor: dict[str, Any], objs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Which endpoints of the PodMonitor find a port on which Deployment's pods (its selector, the port name and
    the keep relabeling on the runtime annotation, as Prometheus would apply them)."""
    found: dict[str, set[str]] = {}
    wanted = monitor["spec"]["selector"]["matchLabels"]
    for d in (o for o in objs if o["kind"] == "Deployment"):
        tmpl = d["spec"]["template"]
        labels, annotations = tmpl["metadata"].get("labels", {}), tmpl["metadata"].get("annotations", {})
        if any(labels.get(k) != v for k, v in wanted.items()):
            continue
        ports = {p.get("name") for c in tmpl["spec"]["containers"] for p in c.get("ports", [])}
        for ep in monitor["spec"]["podMetricsEndpoints"]:
            if ep.get("port") not in ports:
                continue
            keep = [r for r in ep.get("relabelings", []) if r.get("action") == "keep"]
            if any(annotations.get("graft.io/runtime", "") != r["regex"] for r in keep):
                continue
            found.setdefault(d["metadata"]["name"], set()).add(ep["port"])
    return found


def test_podmonitor_scrapes_the_admin_and_the_metrics_port_of_either_runtime() -> None:
    monitors = {m["metadata"]["name"]: m for m in yaml.safe_load_all((MON / "podmonitor.yaml").read_text())}
    assert {m["kind"] for m in monitors.values()} == {"PodMonitor"}
    for m in monitors.values():
        assert all(ep["path"] == "/metrics" for ep in m["spec"]["podMetricsEndpoints"])
    graft = monitors["graft"]
    # TorchServe pods: the metrics port only (their inference port has no /metrics)
    assert _targets(graft, _render("cpu")) == {"graft-admin": {"admin"}, "graft-inference": {"metrics"}}
    # the KServe runtime in the same Deployment: its API port, which serves /metrics
    assert _targets(graft, _render("kserve-runtime")) == {"graft-admin": {"admin"}, "graft-inference": {"inference"}}
    # the InferenceService's predictor pods, by the label KServe gives them, on the runtime's port
    isvc = yaml.safe_load((REPO / "deploy/kserve/graft-runtime/inferenceservice.yaml").read_text())
    kserve = monitors["graft-kserve"]["spec"]
    assert kserve["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    ports = {p["containerPort"] for c in isvc["spec"]["predictor"]["containers"] for p in c["ports"]}
    assert [ep["targetPort"] for ep in kserve["podMetricsEndpoints"]] == [8080] and 8080 in ports
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8080"


# ---------------------------------------------------------------------------------------------- both runtimes, live


def _scrape_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M)}


@pytest.mark.slow
@pytest.mark.torchserve
def test_both_runtimes_export_every_handler_metric_the_dashboard_reads(serving_artifacts: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:  # fmt: skip
    """Real TorchServe and the real KServe runtime, capture on, one good and one bad image each, then /metrics
    (until every name is there: captures are written, and counted, off the request path)."""
    import base64

    import httpx

    from graft.torchserve.launcher import TorchServe
    from tests.kserve.runtime import kserve_runtime
    from tests.serving.test_torchserve import config
    from tests.support.artifacts import images

    if shutil.which("java") is None:
        pytest.skip("java not found: TorchServe's frontend needs a Java 17 runtime")
    _, store = serving_artifacts
    used = set().union(*(metric_names(e) for e in dashboard_exprs() + rule_exprs()))
    wanted = {n for n in used if n.startswith("graft_") and not n.startswith("graft_admin_")}
    assert "graft_requests_total" in wanted and "graft_worker_starts_total" in wanted
    good, bad = images("val", per_class=1)[0][0].read_bytes(), b"not an image"

    def capture(where: str) -> dict[str, str]:
        return {"GRAFT_CAPTURE_RATE": "1.0", "GRAFT_CAPTURE_DIR": str(tmp_path / where / "captures")}

    def scrape(url: str) -> set[str]:
        deadline = time.monotonic() + 30
        while True:
            names = _scrape_names(httpx.get(url, timeout=30).text)
            if wanted <= names or time.monotonic() > deadline:
                return names  # the caller's assertion names what is missing
            time.sleep(1)

    ts = TorchServe(config(store, tmp_path / "ts", environment=capture("ts")))
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        headers = {**ts.headers(), "Content-Type": "application/octet-stream"}
        codes = [httpx.post(f"{ts.inference_url}/predictions/antsbees", content=body, headers=headers,
                            timeout=60).status_code for body in (good, bad)]  # fmt: skip
        scraped_ts = scrape(f"{ts.metrics_url}/metrics")
    finally:
        ts.stop()
    assert codes[0] == 200 and 400 <= codes[1] < 500, codes
    assert wanted <= scraped_ts, f"TorchServe lacks {wanted - scraped_ts}"

    with kserve_runtime(store, tmp_path / "kserve", env=capture("kserve")) as rt, rt.client() as c:
        codes = [c.post("/v1/models/antsbees:predict",
                        json={"instances": [{"data": base64.b64encode(body).decode()}]}).status_code
                 for body in (good, bad)]  # fmt: skip
        scraped_ks = scrape(f"{rt.url}/metrics")
    assert codes[0] == 200 and 400 <= codes[1] < 500, codes
    assert wanted <= scraped_ks, f"the KServe runtime lacks {wanted - scraped_ks}"
