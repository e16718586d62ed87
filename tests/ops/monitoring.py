"""What the monitoring tests share: the alert rules and dashboard queries of deploy/, as
plain data."""

from __future__ import annotations

import json
import re
from typing import Any

from shared.localstack import prometheus
from shared.settings import PROJECT_ROOT

RULES = prometheus.RULES
RULE_TESTS = PROJECT_ROOT / "deploy" / "prometheus" / "tests" / "alerts.test.yaml"
DASHBOARDS = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"

# Grafana's variables, as a dashboard showing the last hour for every department fills them in.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$department": ".*",
}


def rule_groups() -> dict[str, Any]:
    """The `spec` of the PrometheusRule: a plain Prometheus rule file."""
    return prometheus.rule_groups()


write_rule_file = prometheus.write_rules


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL with Grafana's variables filled in)."""
    found = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                found.append((name, panel["title"], expr))
    return found


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:griddispatch|faststream)_[a-z_]+\b", expr))
