"""docker/compose.yml stays consistent with the native stack: images, ports, variables."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.settings import Settings
from pipeline.shell import stack

ROOT = Path(__file__).parents[4]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())


def test_services_and_pinned_images() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "cassandra", "redis", "worker", "connectors", "api",
                             "jaeger", "prometheus", "grafana"}
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
    assert set(worker["depends_on"]) == {"kafka", "cassandra", "redis", "jaeger"}
    assert f"127.0.0.1:{Settings().metrics_port}:{Settings().metrics_port}" in worker["ports"]
    # Published container ports reach only a process listening on the container's interfaces.
    assert env["STOCKFLOW_BIND_HOST"] == "0.0.0.0"


STOCKFLOW_SERVICES = ("worker", "connectors", "api")


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (resolved from docker/) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = str((ROOT / "docker" / host).resolve())
    return out


def test_stockflow_services_use_real_settings_and_send_traces_to_jaeger() -> None:
    services = _compose()["services"]
    fields = set(Settings.model_fields)
    for name in STOCKFLOW_SERVICES:
        env = services[name]["environment"]
        for var in env:
            assert var.removeprefix("STOCKFLOW_").lower() in fields, f"{name}: {var}"
        assert env["STOCKFLOW_BIND_HOST"] == "0.0.0.0", name
        assert env["STOCKFLOW_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092", name
        if name == "api":
            continue  # it records no spans
        assert env["STOCKFLOW_TRACING_ENABLED"] == "true", name
        assert env["STOCKFLOW_TRACING_EXPORTER"] == "otlp", name
        # What the setting parses to, and it names the Jaeger service's published OTLP port.
        settings = Settings(tracing_endpoint=env["STOCKFLOW_TRACING_ENDPOINT"],
                            tracing_sample_ratio=env["STOCKFLOW_TRACING_SAMPLE_RATIO"])
        assert settings.tracing_endpoint == "http://jaeger:4318/v1/traces"
    assert "127.0.0.1:4318:4318" in services["jaeger"]["ports"]
    assert "127.0.0.1:16686:16686" in services["jaeger"]["ports"]
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert f"127.0.0.1:{Settings().connectors_metrics_port}:9109" in services["connectors"]["ports"]
    assert f"127.0.0.1:{Settings().api_port}:8000" in services["api"]["ports"]
    assert services["api"]["environment"]["STOCKFLOW_API_HOST"] == "0.0.0.0"
    suppliers = _mounts(services["connectors"])["/etc/stockflow/suppliers.yaml"]
    assert Path(suppliers).exists()
    assert services["connectors"]["environment"]["STOCKFLOW_SUPPLIERS_CONFIG"] == \
        "/etc/stockflow/suppliers.yaml"


def _targets(config: dict) -> dict[str, list[str]]:
    return {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
            for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_stockflow_service_with_the_alert_rules() -> None:
    services = _compose()["services"]
    mounts = _mounts(services["prometheus"])
    config_path = Path(mounts["/etc/prometheus/prometheus.yml"])
    assert config_path == (ROOT / "docker" / "prometheus-compose.yml").resolve()
    config = yaml.safe_load(config_path.read_text())
    # The rule files sit next to the config in the container, as alerts.yml does in docker/.
    for rule_file in config["rule_files"]:
        assert mounts[f"/etc/prometheus/{rule_file}"] == str(ROOT / "docker" / rule_file)
    targets = _targets(config)
    expected = {"stockflow-worker": "worker:9108", "stockflow-connectors": "connectors:9109",
                "stockflow-api": "api:8000"}
    assert targets == {job: [t] for job, t in expected.items()}
    for job, target in expected.items():
        host, port = target.split(":")
        published = [p.split(":")[-1] for p in services[host]["ports"]]
        assert port in published, f"{job}: {host} does not listen on {port}"
    # Native and Compose configs: the same jobs, rules and intervals; only targets differ.
    native = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert native["rule_files"] == config["rule_files"]
    assert native["global"] == config["global"]
    assert set(_targets(native)) == set(targets)
    assert _targets(native) == {job: [f"127.0.0.1:{t.split(':')[1]}"]
                                for job, t in expected.items()}


def test_grafana_provisions_prometheus_and_the_dashboard() -> None:
    services = _compose()["services"]
    mounts = _mounts(services["grafana"])
    provisioning = Path(mounts["/etc/grafana/provisioning"])
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    providers = yaml.safe_load((provisioning / "dashboards" / "stockflow.yml").read_text())
    (provider,) = providers["providers"]
    folder = provider["options"]["path"]
    dashboards = {c: h for c, h in mounts.items() if c.startswith(folder + "/")}
    assert dashboards, "no dashboard mounted where the provider reads"
    for host in dashboards.values():
        dashboard = json.loads(Path(host).read_text())
        assert dashboard["uid"] == "stockflow-pipeline"
        assert dashboard["panels"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards


def test_compose_prometheus_config_passes_promtool() -> None:
    import shutil
    import subprocess

    import pytest

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/bootstrap.sh installs it)")
    result = subprocess.run([promtool, "check", "config",
                             str(ROOT / "docker" / "prometheus-compose.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
