"""The alert rules and dashboards of deploy/ checked with Prometheus' own promtool: rules
valid and their unit tests passing, every dashboard query valid PromQL, every metric they
name exported by a service, every runbook link pointing at a section of the operations guide.
(The queries run against a real Prometheus scraping the services in tests/e2e.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import services.escalation.app
import services.escalation.timers
import services.intake.app
import services.intake.http.cases
import services.notifier.app
import services.notifier.delivery
import services.notifier.resident_delivery
import services.router.app
import services.router.dispatch  # noqa: F401  (the imports register every service's metrics)
from shared import kafka
from shared.metrics import REGISTRY
from shared.settings import PROJECT_ROOT, KafkaSettings
from tests.helpers import ops_tools
from tests.ops import monitoring


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ops_tools.promtool()), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_alert_rules_are_valid_and_their_unit_tests_pass(tmp_path: Path) -> None:
    rules = monitoring.write_rule_file(tmp_path)
    checked = promtool("check", "rules", rules.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    n = sum(len(g["rules"]) for g in monitoring.rule_groups()["groups"])
    assert f"SUCCESS: {n} rules found" in checked.stdout
    shutil.copy(monitoring.RULE_TESTS, tmp_path / "alerts.test.yaml")
    tested = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_unit_tests_would_catch_a_broken_rule(tmp_path: Path) -> None:
    groups = monitoring.rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "GridDispatchOutboxBacklog":
                rule["expr"] = rule["expr"].replace("> 60", "> 6000")
    (tmp_path / "alerts.rules.yaml").write_text(yaml.safe_dump(groups))
    shutil.copy(monitoring.RULE_TESTS, tmp_path / "alerts.test.yaml")
    tested = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "GridDispatchOutboxBacklog" in tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = monitoring.panel_queries()
    assert len(queries) >= 25
    as_rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, _, expr) in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(as_rules))
    checked = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_metric_in_rules_and_dashboards_is_exported() -> None:
    kafka.make_broker(KafkaSettings(), "metrics-check")  # registers FastStream's metrics
    exported = set(REGISTRY._names_to_collectors)
    named = set()
    for _, _, expr in monitoring.panel_queries():
        named |= monitoring.metric_names(expr)
    for group in monitoring.rule_groups()["groups"]:
        for rule in group["rules"]:
            named |= monitoring.metric_names(rule["expr"])
    missing = {n for n in named if n not in exported and n.removesuffix("_bucket") not in exported}
    assert not missing, f"queried but never exported: {sorted(missing)}"


def test_dashboards_are_fresh_and_ask_for_their_datasource() -> None:
    fresh = subprocess.run(
        [sys.executable, "deploy/grafana/dashboards.py", "--check"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr
    boards = monitoring.dashboards()
    assert set(boards) == {"dispatch-overview.json", "pipeline-health.json"}
    for board in boards.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_every_alert_links_to_a_runbook_section() -> None:
    guide = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", guide, re.M)
    }
    for group in monitoring.rule_groups()["groups"]:
        for rule in group["rules"]:
            link = rule["annotations"]["runbook_url"]
            assert link.startswith("docs/operations.md#"), link
            assert link.split("#", 1)[1] in anchors, f"no section for {rule['alert']}"
