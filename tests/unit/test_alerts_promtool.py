"""docker/alerts.yml and prometheus.yml pass promtool, and the alerts fire when they should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "docker" / "alerts.yml"
PROMETHEUS = ROOT / "docker" / "prometheus.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus; .ci/bootstrap.sh does)")

W = {"job": "stockflow-worker", "instance": "w1"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in {**W, **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def alert(name: str, at: str, expected: list[dict[str, Any]], summary: str = "") -> dict[str, Any]:
    """Expect `name` to fire at `at` with these labels and this summary annotation."""
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": e, "exp_annotations": {"summary": summary}}
                           for e in expected]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_rules_and_config_pass_promtool_check() -> None:
    rules = promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "--syntax-only", str(PROMETHEUS))
    assert config.returncode == 0, config.stdout + config.stderr


def test_alerts_fire_on_their_conditions_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    lag = {"group": "stockflow", "topic": "inventory.deltas"}
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {   # lag growing by 100 a minute on one topic, flat (but high) on another
                "interval": "1m",
                "input_series": [
                    series("stockflow_consumer_lag", "1000+100x40", partition="0", **lag),
                    series("stockflow_consumer_lag", "5000x40", partition="0",
                           group="stockflow", topic="inventory.changes"),
                ],
                "alert_rule_test": [
                    alert("StockflowConsumerLagGrowing", "5m", []),
                    alert("StockflowConsumerLagGrowing", "30m",
                          [{**lag, "severity": "warning"}],
                          "Lag of stockflow on inventory.deltas is 4000 and growing"),
                ],
            },
            {   # 5% of 10 events/s dead-lettered vs. a healthy worker
                "interval": "1m",
                "input_series": [
                    series("stockflow_events_total", "0+600x40", stage="validate",
                           outcome="valid"),
                    series("stockflow_dead_letters_total", "0+30x40", reason="bad_sku"),
                ],
                "alert_rule_test": [
                    alert("StockflowDeadLetterRateHigh", "30m", [{"severity": "warning"}],
                          "5% of deltas go to inventory.deadletter"),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    series("stockflow_events_total", "0+600x40", stage="validate",
                           outcome="valid"),
                    series("stockflow_dead_letters_total", "0+1x40", reason="bad_sku"),
                ],
                "alert_rule_test": [alert("StockflowDeadLetterRateHigh", "30m", [])],
            },
            {   # supplier s1 went silent at t=0 (timestamp 0 s), s2 keeps sending
                "interval": "1m",
                "input_series": [
                    series("stockflow_supplier_last_event_timestamp_seconds", "0x120",
                           supplier="s1"),
                    series("stockflow_supplier_last_event_timestamp_seconds", "0+60x120",
                           supplier="s2"),
                ],
                "alert_rule_test": [
                    alert("StockflowSupplierFeedStale", "30m", []),
                    alert("StockflowSupplierFeedStale", "70m",
                          [{**W, "supplier": "s1", "severity": "warning"}],
                          "No accepted event from supplier s1 for 1h 10m 0s"),
                ],
            },
            {   # Cassandra retrying for 10 minutes, Redis fine
                "interval": "1m",
                "input_series": [
                    series("stockflow_sink_retries_total", "0+5x20", sink="cassandra"),
                    series("stockflow_sink_retries_total", "0x20", sink="redis"),
                ],
                "alert_rule_test": [
                    alert("StockflowSinkRetrying", "15m",
                          [{"sink": "cassandra", "severity": "critical"}],
                          "The cassandra sink has been retrying writes for 5 minutes"),
                ],
            },
            {   # every change reaches Redis between 2.5 s and 5 s: p99 over the 1 s target
                "interval": "1m",
                "input_series": [
                    series("stockflow_freshness_seconds_bucket", "0x30", stage="redis", le="1"),
                    series("stockflow_freshness_seconds_bucket", "0x30", stage="redis",
                           le="2.5"),
                    series("stockflow_freshness_seconds_bucket", "0+60x30", stage="redis",
                           le="5"),
                    series("stockflow_freshness_seconds_bucket", "0+60x30", stage="redis",
                           le="+Inf"),
                ],
                "alert_rule_test": [
                    alert("StockflowFreshnessP99High", "25m", [{"severity": "warning"}],
                          "Freshness p99 is 4.975s (target 1 s)"),
                ],
            },
            {   # fast: everything under 100 ms
                "interval": "1m",
                "input_series": [
                    series("stockflow_freshness_seconds_bucket", "0+60x30", stage="redis",
                           le="0.1"),
                    series("stockflow_freshness_seconds_bucket", "0+60x30", stage="redis",
                           le="+Inf"),
                ],
                "alert_rule_test": [alert("StockflowFreshnessP99High", "25m", [])],
            },
            {   # a worker stuck in recovery
                "interval": "1m",
                "input_series": [series("stockflow_worker_ready", "0x20"),
                                 series("up", "1x20")],
                "alert_rule_test": [
                    alert("StockflowWorkerNotReady", "15m", [{**W, "severity": "critical"}],
                          "stockflow worker w1 not ready for 10 minutes"),
                ],
            },
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
