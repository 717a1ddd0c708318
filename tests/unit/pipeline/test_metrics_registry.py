"""The dashboard and the alert rules query only metrics (and labels) that stockflow exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import connectors.sources.metrics as connector_metrics
import pipeline.metrics as pipeline_metrics
from topologies.runtime.lag import ConsumerLagCollector

ROOT = Path(__file__).parents[3]
DASHBOARD = ROOT / "docker" / "grafana" / "stockflow-dashboard.json"
ALERTS = ROOT / "docker" / "alerts.yml"

# Series Prometheus itself adds to every target.
BUILTIN: dict[str, set[str]] = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "delta", "deriv", "increase", "histogram_quantile",
    "time", "and", "or", "unless", "max", "min", "avg", "count", "clamp_min", "clamp_max",
    "topk", "bottomk", "offset", "on", "ignoring", "group_left", "group_right", "abs", "le",
}


def exported_series() -> dict[str, set[str]]:
    """Every sample name stockflow exports, with the labels it carries."""
    out: dict[str, set[str]] = dict(BUILTIN)
    for module in (pipeline_metrics, connector_metrics):
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            labels = set(metric._labelnames) | TARGET_LABELS
            name, kind = metric._name, metric._type
            if kind == "counter":
                out[f"{name}_total"] = labels
            elif kind == "histogram":
                out[f"{name}_bucket"] = labels | {"le"}
                out[f"{name}_count"] = labels
                out[f"{name}_sum"] = labels
            else:
                out[name] = labels
    lag = ConsumerLagCollector({}, "g", [])
    for family in lag.describe():
        out[family.name] = {"group", "topic", "partition"} | TARGET_LABELS
    return out


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that name series (not functions, keywords or labels)."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "", no_strings)
    no_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", no_matchers)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_groupings)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", no_ranges))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def labels_used(expr: str) -> set[str]:
    """Label names in matchers and in by(...)/without(...) clauses."""
    used: set[str] = set()
    for matcher in re.findall(r"\{([^}]*)\}", expr):
        used |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matcher))
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used |= {g.strip() for g in grouping.split(",") if g.strip()}
    return used


def check_expression(expr: str, series: dict[str, set[str]], extra_labels: set[str] = frozenset()
                     ) -> list[str]:
    problems = []
    names = metric_names(expr)
    if not names:
        problems.append(f"no metric in {expr!r}")
    unknown = names - set(series)
    if unknown:
        problems.append(f"unknown metrics {sorted(unknown)} in {expr!r}")
    known_labels = set().union(*(series.get(n, set()) for n in names)) | {"le"}
    bad_labels = (labels_used(expr) | extra_labels) - known_labels
    if bad_labels:
        problems.append(f"labels {sorted(bad_labels)} not on {sorted(names)} in {expr!r}")
    return problems


def dashboard_targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_parser_finds_names_and_labels() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, stage) '
            '(rate(stockflow_freshness_seconds_bucket{stage="redis"}[5m]))) > 1')
    assert metric_names(expr) == {"stockflow_freshness_seconds_bucket"}
    assert labels_used(expr) == {"le", "stage"}
    series = exported_series()
    assert check_expression(expr, series) == []
    assert check_expression("rate(stockflow_no_such_metric_total[5m])", series)
    assert check_expression('sum by (colour) (stockflow_events_total)', series)


def test_dashboard_loads_and_every_query_refers_to_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    series = exported_series()
    problems: list[str] = []
    for target in dashboard_targets():
        expr = target["expr"].replace("$__rate_interval", "5m")
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        problems += check_expression(expr, series, legend)
    assert problems == []


@pytest.mark.parametrize("needle", [
    "stockflow_events_total", "stockflow_consumer_lag", "stockflow_freshness_seconds_bucket",
    "stockflow_dead_letters_total", "stockflow_supplier_last_event_timestamp_seconds",
    "stockflow_sink_retries_total", "stockflow_sink_errors_total",
    "stockflow_connector_circuit_state", "stockflow_table_keys",
    "stockflow_sink_batch_seconds_bucket", "stockflow_sink_batch_size_sum",
    "stockflow_sequence_gaps_total", "stockflow_dropped_total",
])
def test_dashboard_shows_each_issue_metric(needle: str) -> None:
    assert any(needle in t["expr"] for t in dashboard_targets())


def test_alert_rules_refer_to_exported_metrics_and_labels() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"StockflowConsumerLagGrowing", "StockflowDeadLetterRateHigh",
            "StockflowSupplierFeedStale", "StockflowSinkRetrying",
            "StockflowFreshnessP99High"} <= names
    series = exported_series()
    problems: list[str] = []
    for rule in rules:
        templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        problems += check_expression(rule["expr"], series, templated)
        assert rule["labels"]["severity"] in {"warning", "critical"}
    assert problems == []
