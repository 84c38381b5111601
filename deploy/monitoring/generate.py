"""Writes deploy/monitoring/'s generated files: the plain rules file and the Grafana dashboard.

    python deploy/monitoring/generate.py          # rewrite graft-rules.yaml and graft-dashboard.json
    python deploy/monitoring/generate.py --check  # exit 1 when a committed file differs (what the test asserts)

The PrometheusRule (prometheusrule.yaml) is the source of the alerts; graft-rules.yaml is its ``spec`` for a
Prometheus without the operator (``promtool check rules`` reads it). The dashboard is built here so that every
panel follows one shape; its queries name only metrics both serving runtimes export (docs/monitoring.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULE = HERE / "prometheusrule.yaml"
PLAIN = HERE / "graft-rules.yaml"
DASHBOARD = HERE / "graft-dashboard.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'ModelName=~"$model"'  # every handler query is filtered by the model variable
RI = "$__rate_interval"


def plain_rules(rule: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule's ``spec`` (its rule groups), as Prometheus' rule_files take it."""
    return {"groups": rule["spec"]["groups"]}


def plain_rules_text() -> str:
    head = ("# Generated from prometheusrule.yaml by deploy/monitoring/generate.py: edit that file, then run it.\n"
            "# For a Prometheus without the operator: rule_files: [graft-rules.yaml]\n")  # fmt: skip
    body: str = yaml.dump(plain_rules(yaml.safe_load(RULE.read_text())), Dumper=_BlockDumper, sort_keys=False,
                          width=120)
    return head + body


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as ``|`` blocks, as in the PrometheusRule."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _str)


class _Panels:
    """Lays panels out on Grafana's 24-column grid, row by row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})  # fmt: skip
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def add(self, title: str, targets: list[tuple[str, str]], unit: str = "short", *, kind: str = "timeseries",
            w: int = 8, h: int = 8, description: str = "", thresholds: list[tuple[float, str]] | None = None) -> None:
        if self.x + w > 24:
            self._newline()
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        steps += [{"color": color, "value": v} for v, color in thresholds or []]
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [{"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "range": True} for i, (expr, legend) in enumerate(targets)],
        }
        if kind == "stat":
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                "colorMode": "value", "graphMode": "none", "textMode": "auto"}  # fmt: skip
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def _quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    # per model: one model's slow batches must not hide among another's fast ones when several are selected
    group = f"le, ModelName, {by}" if by else "le, ModelName"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{M}}}[{RI}])))",
             f"{{{{ModelName}}}} p{int(q * 100)}{suffix}") for q in (0.5, 0.95, 0.99)]


def dashboard() -> dict[str, Any]:
    p = _Panels()
    p.row("Traffic (the handler, on TorchServe or the KServe runtime)")
    p.add("Requests by status", [(f"sum by (ModelName, Status) (rate(graft_requests_total{{{M}}}[{RI}]))",
                                  "{{ModelName}} {{Status}}")], "reqps",
          description="Requests the handler answered, by status class. Refused before the handler (auth, a full "
                      "queue) they are counted by the runtime alone.")  # fmt: skip
    p.add("Error ratio", [
        (f'sum by (ModelName) (rate(graft_requests_total{{{M},Status="{s}"}}[{RI}])) '
         f"/ sum by (ModelName) (rate(graft_requests_total{{{M}}}[{RI}]))", f"{{{{ModelName}}}} {s}")
        for s in ("5xx", "4xx")
    ], "percentunit", thresholds=[(0.01, "orange"), (0.05, "red")],
        description="5xx: failed batches (GraftHighErrorRate fires above 5%). 4xx: refused inputs.")  # fmt: skip
    p.add("Refused inputs by reason", [(f"sum by (ModelName, Reason) (rate(graft_rejected_inputs_total{{{M}}}[{RI}]))",
                                        "{{ModelName}} {{Reason}}")], "reqps")  # fmt: skip
    p.add("Predictions by label", [(f"sum by (ModelName, Label) (rate(graft_predictions_total{{{M}}}[{RI}]))",
                                    "{{ModelName}} {{Label}}")],
          "ops", description="Top-1 answers per second, by label (images, not requests).")
    p.add("Requests by version", [(f"sum by (ModelName, ModelVersion) (rate(graft_requests_total{{{M}}}[{RI}]))",
                                   "{{ModelName}} v{{ModelVersion}}")], "reqps",
          description="Which versions answer: a promotion or rollback shows as traffic moving between lines.")
    p.add("Model version in service", [("max(graft_admin_serving_version)", "default version")], "none", kind="stat",
          w=8, description="The admin's default version (-1: not a number).")  # fmt: skip
    p.row("Latency and batching")
    p.add("Inference time per batch", _quantiles("graft_inference_seconds"), "s", thresholds=[(1.0, "red")],
          description="The model's time per batch (GraftHighLatencyP95 fires above 1 s at p95). The queue wait in "
                      "front of the handler is not in it.")  # fmt: skip
    p.add("Preprocessing time per batch", _quantiles("graft_preprocess_seconds"), "s",
          description="Parse, decode and transform of a batch's images.")
    p.add("Batch size", [
        *_quantiles("graft_batch_size")[:2],
        (f"sum by (ModelName) (rate(graft_batch_size_sum{{{M}}}[{RI}])) "
         f"/ sum by (ModelName) (rate(graft_batch_size_count{{{M}}}[{RI}]))", "{{ModelName}} mean"),
    ], "none", description="Images per batch: near 1 under load means the batch delay is too short.")
    p.add("Inference time by backend (p95)", _quantiles("graft_inference_seconds", "Backend")[1:2], "s")
    p.add("Worker starts", [(f"sum by (ModelName, ModelVersion) (increase(graft_worker_starts_total{{{M}}}[1h]))",
                             "{{ModelName}} v{{ModelVersion}}")], "short",
          description="Model loads in the last hour: one per worker started; more is a worker that restarted "
                      "(GraftWorkerRestarted).")  # fmt: skip
    p.row("Captures and drift")
    captures = f"sum by (ModelName, Outcome) (rate(graft_captures_total{{{M}}}[{RI}]))"
    p.add("Captures by outcome (inference pods)", [(captures, "{{ModelName}} {{Outcome}}")], "ops",
          description="stored: kept for review; dropped_queue / dropped_error: lost (a full queue, a full disk).")
    p.add("Captures indexed by status (admin)", [("sum by (status) (graft_admin_captures)", "{{status}}")], "short")
    p.add("Drift (PSI of predicted classes)", [("max(graft_admin_drift_psi)", "PSI")], "none",
          thresholds=[(0.1, "orange"), (0.25, "red")],
          description="Latest window against the champion's holdout: below 0.1 stable, 0.25 and above shifted "
                      "(GraftDriftShifted). Empty below the minimum number of captures.")  # fmt: skip
    p.add("Mean confidence, traffic vs holdout", [("max by (source) (graft_admin_drift_mean_confidence)",
                                                   "{{source}}")], "percentunit")  # fmt: skip
    p.add("Low-margin share, traffic vs holdout", [("max by (source) (graft_admin_drift_low_margin_share)",
                                                    "{{source}}")], "percentunit")  # fmt: skip
    p.add("Predicted share by label", [("max by (label, source) (graft_admin_drift_predicted_share)",
                                        "{{label}} ({{source}})")], "percentunit")  # fmt: skip
    p.row("Retraining and the gate")
    p.add("Jobs finished by outcome", [("sum by (outcome) (increase(graft_admin_jobs_total[1h]))", "{{outcome}}")],
          "short", description="Gate decisions: succeeded (promoted), held (for an admin), rejected; failed: the "
                               "job broke (GraftRetrainFailed).")  # fmt: skip
    p.add("Promotions and rollbacks", [
        ("sum by (action) (increase(graft_admin_promotions_total[1h]))", "{{action}}"),
        ("sum(increase(graft_admin_rollout_failures_total[1h]))", "rollout failures"),
    ], "short")
    p.add("Job running", [("max(graft_admin_job_running)", "running")], "none", kind="stat", w=4)
    p.add("Holdout accuracy in service", [("max(graft_admin_serving_holdout_accuracy)", "accuracy")], "percentunit",
          kind="stat", w=4)
    p.add("Job duration", [("histogram_quantile(0.5, sum by (le) (rate(graft_admin_job_duration_seconds_bucket[6h])))",
                            "p50"),
                           ("histogram_quantile(0.95, sum by (le) (rate(graft_admin_job_duration_seconds_bucket[6h])))",
                            "p95")], "s")  # fmt: skip
    return {
        "__inputs": [],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "11.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "title": "graft",
        "uid": "graft-overview",
        "description": "graft: serving (TorchServe or the KServe runtime), captures, drift, retraining and the gate",
        "tags": ["graft", "inference"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "model", "label": "Model", "type": "query", "datasource": DS,
             "definition": "label_values(graft_requests_total, ModelName)",
             "query": {"query": "label_values(graft_requests_total, ModelName)", "refId": "model"},
             "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0,
             "sort": 1, "regex": "", "options": []},
        ]},
        "panels": p.panels,
    }


def dashboard_text() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--check", action="store_true", help="exit 1 if a committed file is not what this writes")
    args = a.parse_args(argv)
    stale = []
    for path, text in ((PLAIN, plain_rules_text()), (DASHBOARD, dashboard_text())):
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python deploy/monitoring/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
