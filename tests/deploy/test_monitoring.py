"""deploy/monitoring/: the dashboard and the alerts name only metrics the code exports, the plain rules file is
the PrometheusRule's spec, the PrometheusRule fits its CRD schema, and promtool checks and unit-tests the rules.

The metric names come from the code: the handler's SPECS as each runtime exports them (TorchServe from the
metrics config the launcher writes, the KServe runtime from its prometheus_client collectors) and the admin's
registry. test_monitoring_scrape.py scrapes both runtimes live and checks the PodMonitors.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.support.paths import REPO

MON = REPO / "deploy" / "monitoring"
RULE = MON / "prometheusrule.yaml"
PLAIN = MON / "graft-rules.yaml"
DASHBOARD = MON / "graft-dashboard.json"
RULE_TESTS = MON / "tests" / "graft-rules.test.yaml"
# Metrics the alerts read from kube-state-metrics: not ours, so not in the code.
KUBE_STATE = {"kube_deployment_status_replicas_available", "kube_deployment_spec_replicas",
              "kube_pod_container_status_restarts_total"}  # fmt: skip
ALERTS = {"GraftHighErrorRate", "GraftHighLatencyP95", "GraftWorkerRestarted", "GraftInferenceContainerRestarted",
          "GraftDriftShifted", "GraftRetrainFailed", "GraftRetrainRejected", "GraftRolloutFailed",
          "GraftAdminNotReady"}  # fmt: skip

# PromQL words that are not metric names: functions are followed by "(", these are not always.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "inf", "nan"}  # fmt: skip


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitoring_generate", MON / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, groupings, ranges and strings removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def _exported(kind: str, name: str) -> set[str]:
    """The sample names Prometheus sees for one metric family."""
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "counter":
        return {name if name.endswith("_total") else f"{name}_total"}
    return {name}


def _registry_names(registry: CollectorRegistry) -> set[str]:
    out: set[str] = set()
    for family in registry.collect():
        out |= _exported(family.type, family.name)
    return out


def torchserve_names() -> set[str]:
    """What TorchServe's Prometheus mode exports of the model metrics config `graft serve` writes."""
    from graft.core.metrics import metrics_config

    model = metrics_config()["model_metrics"]
    return {n for kind, entries in model.items() for e in entries for n in _exported(kind, e["name"])}


def kserve_names() -> set[str]:
    from graft.kserve.metrics import PrometheusMetricsCache

    registry = CollectorRegistry()
    PrometheusMetricsCache(registry)
    return _registry_names(registry)


def admin_names() -> set[str]:
    from admin.metrics import AdminMetrics

    return _registry_names(AdminMetrics().registry)


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULE.read_text())
    return [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"]]


def unknown_metrics(exprs: list[str], known: set[str]) -> dict[str, set[str]]:
    return {e: bad for e in exprs if (bad := metric_names(e) - known)}


# ---------------------------------------------------------------------------------------------- metric names


def test_the_name_extractor_finds_metrics_and_skips_the_rest() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, ModelName) (rate(graft_inference_seconds_bucket{ModelName=~"$model",'
            'Backend="onnx"}[$__rate_interval]))) / on (ModelName) group_left up or x_total unless x_total offset 1h '
            '> bool 0.5')  # fmt: skip
    assert metric_names(expr) == {"graft_inference_seconds_bucket", "up", "x_total"}
    assert metric_names("label_values(graft_requests_total, ModelName)") == {"graft_requests_total", "ModelName"}


def test_both_runtimes_declare_the_same_handler_metrics() -> None:
    ts, ks = torchserve_names(), kserve_names()
    graft = {n for n in ts if n.startswith("graft_")}
    assert graft, "no graft_ metric in TorchServe's metrics config"
    assert graft == ks, f"only TorchServe: {graft - ks}; only the KServe runtime: {ks - graft}"


def test_every_new_registry_gets_the_handler_collectors() -> None:
    # registries made and dropped one after another (CPython reuses their memory, so their id() repeats)
    assert all(kserve_names() == kserve_names() and kserve_names() for _ in range(20))


def test_every_dashboard_query_names_a_metric_both_runtimes_or_the_admin_export() -> None:
    handler = torchserve_names() & kserve_names()
    known = handler | admin_names()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    # label_values(metric, Label) names the label too: it must be a handler dimension
    from graft.core.metrics import SPECS

    dims = {d for s in SPECS for d in s.dimensions}
    assert unknown_metrics(exprs, known | dims) == {}
    used = set().union(*(metric_names(e) for e in exprs))
    # the dashboard covers what the issue asks for: requests and errors, latency, batches, captures, drift,
    # jobs and the gate, the version in service, worker starts
    for name in ("graft_requests_total", "graft_rejected_inputs_total", "graft_inference_seconds_bucket",
                 "graft_batch_size_bucket", "graft_captures_total", "graft_admin_drift_psi", "graft_admin_jobs_total",
                 "graft_admin_promotions_total", "graft_admin_serving_version", "graft_worker_starts_total"):
        assert name in used, name


def test_a_renamed_metric_fails_the_check() -> None:
    known = (torchserve_names() & kserve_names()) | admin_names()
    exprs = [e.replace("graft_requests_total", "graft_request_total") for e in dashboard_exprs()]
    assert any("graft_request_total" in bad for bad in unknown_metrics(exprs, known).values())
    # a TorchServe-only metric is refused too: the dashboard must read the same on either runtime
    assert unknown_metrics(["sum(rate(ts_inference_requests_total[5m]))"], known)


def test_alerts_name_only_exported_metrics_and_kube_state_metrics() -> None:
    known = (torchserve_names() & kserve_names()) | admin_names() | KUBE_STATE
    assert unknown_metrics(rule_exprs(), known) == {}


def test_latency_histograms_have_buckets_around_the_alert_threshold() -> None:
    # histogram_quantile can only say "above 1 s" when 1 s is a bucket boundary on the KServe runtime
    # (TorchServe's Prometheus histograms use the client's default buckets, which include 1.0 too).
    from graft.kserve import metrics

    assert 1.0 in metrics._BUCKETS["seconds"]


# ---------------------------------------------------------------------------------------------- the dashboard


def test_dashboard_uses_a_datasource_variable_and_a_model_variable_from_a_label() -> None:
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["query"]["query"] == "label_values(graft_requests_total, ModelName)"
    assert doc["schemaVersion"] >= 39 and doc["uid"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            handler = any(n.startswith("graft_") and not n.startswith("graft_admin_") for n in metric_names(t["expr"]))
            if handler:  # every handler query follows the model variable
                assert 'ModelName=~"$model"' in t["expr"], t["expr"]
        # the grid: 24 columns
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24


def test_model_names_are_labels_never_in_metric_names() -> None:
    from graft.core.metrics import SPECS

    for spec in SPECS:
        assert "ModelName" in spec.dimensions, spec.name
        assert "antsbees" not in spec.name
    assert all(re.fullmatch(r"graft_[a-z_]+", n) for n in torchserve_names() & kserve_names())


def test_generated_files_are_up_to_date() -> None:
    gen = generator()
    assert DASHBOARD.read_text() == gen.dashboard_text(), "run python deploy/monitoring/generate.py"
    assert PLAIN.read_text() == gen.plain_rules_text(), "run python deploy/monitoring/generate.py"


# ---------------------------------------------------------------------------------------------- the rules


def test_plain_rules_are_the_prometheusrule_spec() -> None:
    rule = yaml.safe_load(RULE.read_text())
    plain = yaml.safe_load(PLAIN.read_text())
    assert plain == {"groups": rule["spec"]["groups"]}
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"]}
    assert alerts == ALERTS


def test_prometheusrule_fits_its_crd_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((MON / "schemas" / "prometheusrule.v1.json").read_text())
    rule = yaml.safe_load(RULE.read_text())
    # Draft 7 validation without checking the schema itself: the CRD's patterns are Go regular expressions,
    # and one of them ("^(?i)...", a field not used here) is not a Python one.
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(rule)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    # fields the schema does not declare would be pruned by the API server without a word
    group_props = schema["properties"]["spec"]["properties"]["groups"]["items"]["properties"]
    rule_props = group_props["rules"]["items"]["properties"]
    for g in rule["spec"]["groups"]:
        assert set(g) <= set(group_props), set(g) - set(group_props)
        for r in g["rules"]:
            assert set(r) <= set(rule_props), set(r) - set(rule_props)
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
    bad = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {},
           "spec": {"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "up", "for": "ten minutes"}]}]}}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


def test_every_alert_has_a_unit_test_and_a_docs_section() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"]}
    assert tested == ALERTS
    for name in ALERTS:  # a firing case and a quiet one each
        cases = [a for t in tests["tests"] for a in t["alert_rule_test"] if a["alertname"] == name]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases), name
    docs = (REPO / "docs" / "monitoring.md").read_text()
    for name in ALERTS:
        assert f"### {name}" in docs, name


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's prometheus package (make setup does)")
    return path


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", str(PLAIN)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(ALERTS)} rules found" in check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(("old", "new"), [
    ("> 0.05", "> 0.5"),  # the error-rate threshold
    ("graft_admin_drift_psi >= 0.25", "graft_admin_drift_psi >= 0.35"),
    ("for: 10m", "for: 30m"),
    ('or (graft_admin_jobs_total{outcome="failed"} unless', 'and (graft_admin_jobs_total{outcome="failed"} unless'),
])
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path, old: str, new: str) -> None:
    promtool = _promtool()
    text = PLAIN.read_text()
    assert old in text, old
    (tmp_path / "graft-rules.yaml").write_text(text.replace(old, new, 1))
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    run = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0, f"the unit tests pass with {new!r} instead of {old!r}"


def test_the_generator_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generator()
    stale = tmp_path / "graft-dashboard.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(gen, "DASHBOARD", stale)
    monkeypatch.setattr(gen, "PLAIN", PLAIN)
    assert gen.main(["--check"]) == 1
    stale.write_text(gen.dashboard_text())
    assert gen.main(["--check"]) == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
