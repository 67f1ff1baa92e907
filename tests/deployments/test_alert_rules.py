"""The shipped Prometheus alert rules name metrics the service exports, with labels it sets."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_alert_rules_use_exported_metrics_and_labels():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/vsearch-alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 3 and all("for" in r for g in rules["groups"] for r in g["rules"])
    source = (ROOT / "deployments/metrics.py").read_text()
    kinds = {
        name: kind
        for kind, name in re.findall(r'(Gauge|Counter|Histogram)\(\s*"(vsearch_\w+)"', source)
    }
    for expr in exprs:
        for name in re.findall(r"ray_(vsearch_\w+)", expr):
            assert name in kinds, f"{name} is not a vsearch metric"
            if f"rate(ray_{name}" in expr or f"increase(ray_{name}" in expr:
                assert kinds[name] == "Counter", f"rate() over the gauge {name}"
        for label in re.findall(r"(\w+)\s*!?=\s*\"", expr):
            assert label in {"shard", "plan", "reason", "application"}, label
