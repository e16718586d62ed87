"""Writes the Grafana dashboards in deploy/grafana/dashboards/ from the panel lists below, so
the JSON stays consistent (one datasource variable, one grid, one style). Run
`make manifests` after a change; `--check` fails when the JSON files are stale.

Every query here is also checked by the test suite: parsed by promtool, and run against a
real Prometheus scraping the services during the end-to-end test (tests/ops/)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
DEPT = 'department=~"$department"'


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def rate_of_steps(step: str, deadline: str) -> str:
    on_time = (
        f'sum(increase(griddispatch_case_steps_total{{step="{step}",on_time="true",{DEPT}}}'
        "[$__range])) or vector(0)"
    )
    missed = (
        f'sum(increase(griddispatch_sla_breaches_total{{deadline="{deadline}",{DEPT}}}'
        "[$__range])) or vector(0)"
    )
    return f"({on_time}) / (({on_time}) + ({missed}))"


OVERVIEW = [
    Panel(
        "Response rate",
        [(rate_of_steps("acknowledge", "acknowledge"), "acknowledged in time")],
        unit="percentunit",
        kind="stat",
        width=8,
        description="Acknowledged before the deadline, of all acknowledge deadlines met or missed",
    ),
    Panel(
        "Resolution rate",
        [(rate_of_steps("resolve", "resolve"), "resolved in time")],
        unit="percentunit",
        kind="stat",
        width=8,
        description="Resolved before the deadline, of all resolve deadlines met or missed",
    ),
    Panel(
        "Satisfaction",
        [
            (
                f'sum(increase(griddispatch_case_ratings_total{{rating=~"4|5",{DEPT}}}[$__range]))'
                f" / sum(increase(griddispatch_case_ratings_total{{{DEPT}}}[$__range]))",
                "rated 4 or 5 stars",
            )
        ],
        unit="percentunit",
        kind="stat",
        width=8,
        description="Residents' ratings of 4 or 5 stars, of all ratings",
    ),
    Panel(
        "Reports per minute by channel",
        [
            (
                "sum by (channel) (rate(griddispatch_cases_reported_total[$__rate_interval])) * 60",
                "{{channel}}",
            )
        ],
    ),
    Panel(
        "Reports per minute by category (top 10)",
        [
            (
                "topk(10, sum by (category) (rate(griddispatch_cases_reported_total[$__rate_interval]))) * 60",
                "{{category}}",
            )
        ],
    ),
    Panel(
        "Routing outcomes per minute",
        [
            (
                "sum by (outcome) (rate(griddispatch_cases_routed_total[$__rate_interval])) * 60",
                "{{outcome}}",
            ),
            (
                "sum by (reason) (rate(griddispatch_cases_unroutable_total[$__rate_interval])) * 60",
                "unroutable: {{reason}}",
            ),
        ],
    ),
    Panel(
        "Dispatch latency by department",
        [
            (
                f"histogram_quantile({q}, sum by (le, department) "
                f"(rate(griddispatch_dispatch_latency_seconds_bucket{{{DEPT}}}[$__rate_interval])))",
                f"p{int(q * 100)} {{{{department}}}}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        unit="s",
        description="Reported → the case's routing delivered to the department (feed, "
        "webhook, e-mail) or worker (SMS); later messages about a case are not timed",
    ),
    Panel(
        "Warnings and SLA breaches",
        [
            (
                'sum(increase(griddispatch_escalation_timers_fired_total{kind="warn"}[$__rate_interval]))',
                "warnings",
            ),
            (
                f"sum by (department, deadline) "
                f"(increase(griddispatch_sla_breaches_total{{{DEPT}}}[$__rate_interval]))",
                "breach {{department}} {{deadline}}",
            ),
        ],
    ),
    Panel(
        "Escalations by level",
        [
            (
                'sum by (level) (increase(griddispatch_escalation_timers_fired_total{kind="escalate"}'
                "[$__rate_interval]))",
                "level {{level}}",
            )
        ],
    ),
    Panel(
        "Resolved cases closed unverified",
        [
            (
                f"sum by (department) "
                f"(increase(griddispatch_cases_closed_unverified_total{{{DEPT}}}[$__rate_interval]))",
                "{{department}}",
            )
        ],
        description="Resolutions that neither the resident verified nor reopened within the "
        "verification window, so GridDispatch closed them: a department with many rarely hears "
        "back from its residents",
    ),
    Panel(
        "More time asked, granted, refused; reports merged; cases urged",
        [
            (
                f"sum by (step) (increase(griddispatch_case_extensions_total{{{DEPT}}}"
                "[$__rate_interval]))",
                "extensions {{step}}",
            ),
            (
                f"sum by (step) (increase(griddispatch_cases_merged_total{{{DEPT}}}"
                "[$__rate_interval]))",
                "merges: {{step}}",
            ),
            (
                f"sum(increase(griddispatch_cases_urged_total{{{DEPT}}}[$__rate_interval]))",
                "urged by residents",
            ),
            ("max(griddispatch_extensions_waiting)", "extensions waiting for an answer"),
        ],
        description="Extensions of resolve deadlines (asked by departments and workers, "
        "answered by operators: GET /v1/cases?extension_asked=true lists those waiting) and "
        "duplicate reports merged into the case carrying the work (resolved_with: resolved with "
        "it)",
    ),
    Panel(
        "Open backlog per department",
        [(f"max by (department) (griddispatch_cases_open{{{DEPT}}})", "{{department}}")],
    ),
    Panel(
        "Waiting in triage",
        [
            ("max(griddispatch_triage_cases)", "cases"),
            ("max(griddispatch_triage_oldest_age_seconds) / 60", "longest wait (min)"),
        ],
        description="Cases for which no grid or department was found: they wait for an "
        "operator to route them (griddispatch triage list), with no deadline until then",
    ),
]

PIPELINE = [
    Panel(
        "Services up",
        [('up{job=~"griddispatch-.*"}', "{{job}} {{instance}}")],
        kind="stat",
        width=24,
    ),
    Panel(
        "Messages processed per second",
        [
            (
                "sum by (app_name, handler) (rate(faststream_received_processed_messages_total[$__rate_interval]))",
                "{{app_name}} {{handler}}",
            ),
            (
                "sum by (app_name) (rate(faststream_published_messages_total[$__rate_interval]))",
                "{{app_name}} published",
            ),
        ],
        unit="ops",
    ),
    Panel(
        "Errors per second",
        [
            (
                "sum by (app_name, handler, exception_type) "
                "(rate(faststream_received_processed_messages_exceptions_total[$__rate_interval]))",
                "{{app_name}} {{exception_type}}",
            ),
            (
                'sum by (service, route) (rate(griddispatch_http_requests_total{status=~"5.."}[$__rate_interval]))',
                "HTTP 5xx {{service}} {{route}}",
            ),
        ],
        unit="ops",
    ),
    Panel(
        "Consumer lag",
        [("sum by (group, topic) (griddispatch_consumer_lag)", "{{group}} ← {{topic}}")],
        description="Records not yet committed, per consumer group (KEDA scales on the same)",
    ),
    Panel(
        "Outbox backlog",
        [
            ("max by (schema) (griddispatch_outbox_backlog)", "{{schema}} rows"),
            ("max by (schema) (griddispatch_outbox_oldest_age_seconds)", "{{schema}} oldest (s)"),
        ],
    ),
    Panel(
        "Timer lateness",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate(griddispatch_timer_lateness_seconds_bucket[$__rate_interval])))",
                f"p{int(q * 100)}",
            )
            for q in (0.5, 0.99)
        ]
        + [("max(griddispatch_timers_overdue_unfired)", "overdue, not fired")],
        unit="s",
    ),
    Panel(
        "Pending timers",
        [("max(griddispatch_timers_pending)", "pending")],
    ),
    Panel(
        "Dead letters",
        [
            (
                "sum by (topic, consumer) (increase(griddispatch_dead_letters_total[$__rate_interval]))",
                "{{consumer}} ← {{topic}}",
            ),
            (
                "sum(increase(griddispatch_deliveries_dead_total[$__rate_interval]))",
                "deliveries (webhook, e-mail, SMS)",
            ),
        ],
    ),
    Panel(
        "Background loops restarted",
        [
            (
                "sum by (job, task) "
                "(increase(griddispatch_background_restarts_total[$__rate_interval]))",
                "{{job}} {{task}}",
            )
        ],
    ),
    Panel(
        "Rows pruned by retention",
        [
            (
                "sum by (service, purge) "
                "(increase(griddispatch_retention_pruned_total[$__rate_interval]))",
                "{{service}} {{purge}}",
            )
        ],
    ),
    Panel(
        "Webhook endpoints",
        [
            ("max(griddispatch_webhook_breakers_open)", "breaker open (cooling down)"),
            ("max(griddispatch_webhook_endpoints_disabled)", "disabled"),
        ],
    ),
    Panel(
        "Deliveries by result",
        [
            (
                "sum by (channel, result) (rate(griddispatch_deliveries_total[$__rate_interval]))",
                "{{channel}} {{result}}",
            ),
            (
                "sum by (channel, result) (rate(griddispatch_resident_messages_total[$__rate_interval]))",
                "resident {{channel}} {{result}}",
            ),
        ],
        unit="ops",
    ),
    Panel(
        "HTTP latency p99 by route",
        [
            (
                "histogram_quantile(0.99, sum by (le, service, route) "
                "(rate(griddispatch_http_request_seconds_bucket[$__rate_interval])))",
                "{{service}} {{route}}",
            )
        ],
        unit="s",
    ),
]


def _panel(i: int, p: Panel, x: int, y: int) -> dict[str, object]:
    height = 5 if p.kind == "stat" else 8
    return {
        "id": i + 1,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": height},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}}
        if p.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {"refId": chr(65 + n), "datasource": DS, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(p.targets)
        ],
    }


def dashboard(uid: str, title: str, panels: list[Panel], *, departments: bool) -> dict[str, object]:
    laid_out, x, y = [], 0, 0
    for i, p in enumerate(panels):
        if x + p.width > 24:
            x, y = 0, y + 8
        laid_out.append(_panel(i, p, x, y))
        x += p.width
    variables: list[dict[str, object]] = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"}
    ]
    if departments:
        variables.append(
            {
                "name": "department",
                "label": "Department",
                "type": "query",
                "datasource": DS,
                "query": {"query": "label_values(griddispatch_cases_routed_total, department)"},
                "definition": "label_values(griddispatch_cases_routed_total, department)",
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "current": {"text": "All", "value": "$__all"},
                "refresh": 2,
            }
        )
    return {
        "uid": uid,
        "title": title,
        "tags": ["griddispatch"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": laid_out,
    }


DASHBOARDS = {
    "dispatch-overview.json": dashboard(
        "griddispatch-overview", "GridDispatch · Dispatch overview", OVERVIEW, departments=True
    ),
    "pipeline-health.json": dashboard(
        "griddispatch-pipeline", "GridDispatch · Pipeline health", PIPELINE, departments=False
    ),
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(d, indent=2, ensure_ascii=False) + "\n" for name, d in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards {stale}: run `make manifests`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
