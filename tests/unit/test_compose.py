"""docker/compose.yml stays consistent with the native stack: images, ports, variables."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import stack
from pipeline.settings import Settings

ROOT = Path(__file__).parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())


def test_services_and_pinned_images() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "cassandra", "redis", "worker"}
    assert services["kafka"]["image"] == f"apache/kafka:{stack.KAFKA_VERSION}"
    assert services["cassandra"]["image"] == f"cassandra:{stack.CASSANDRA_VERSION}"
    assert services["redis"]["image"].startswith("redis:")
    for name in ("kafka", "cassandra", "redis"):
        assert "healthcheck" in services[name], name


def test_same_ports_as_native_stack() -> None:
    services = _compose()["services"]
    expected = {"kafka": stack.KAFKA_PORT, "cassandra": stack.CASSANDRA_PORT,
                "redis": stack.REDIS_PORT}
    for name, port in expected.items():
        assert f"127.0.0.1:{port}:{port}" in services[name]["ports"], name


def test_worker_variables_are_real_settings() -> None:
    worker = _compose()["services"]["worker"]
    env = worker["environment"]
    fields = set(Settings.model_fields)
    for var in env:
        assert var.startswith("STOCKFLOW_"), var
        assert var.removeprefix("STOCKFLOW_").lower() in fields, f"{var} is not a setting"
    assert (ROOT / "docker" / "Dockerfile").exists()
    assert {d for d in worker["depends_on"]} == {"kafka", "cassandra", "redis"}
    assert f"127.0.0.1:{Settings().metrics_port}:{Settings().metrics_port}" in worker["ports"]
    # Published container ports reach only a process listening on the container's interfaces.
    assert env["STOCKFLOW_BIND_HOST"] == "0.0.0.0"
