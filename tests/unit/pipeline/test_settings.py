"""Settings: defaults point at the local stack; the environment overrides; secrets stay secret."""

from __future__ import annotations

import pydantic
import pytest

from pipeline.settings import Settings


def test_defaults_point_at_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STOCKFLOW_KAFKA_BOOTSTRAP_SERVERS", "STOCKFLOW_CASSANDRA_CONTACT_POINTS"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.cassandra_contact_points == ("127.0.0.1",)
    assert s.cassandra_port == 9042
    assert s.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert s.processing_guarantee == "exactly_once"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKFLOW_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("STOCKFLOW_CASSANDRA_CONTACT_POINTS", "c1, c2")
    monkeypatch.setenv("STOCKFLOW_PARTITIONS", "12")
    monkeypatch.setenv("STOCKFLOW_PROCESSING_GUARANTEE", "at_least_once")
    s = Settings()
    assert s.cassandra_contact_points == ("c1", "c2")
    assert s.partitions == 12
    assert s.processing_guarantee == "at_least_once"
    assert s.kafka_broker_url == "kafka://k1:9092;kafka://k2:9092"


def test_secrets_never_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKFLOW_CASSANDRA_PASSWORD", "hunter2")
    monkeypatch.setenv("STOCKFLOW_KAFKA_SASL_PASSWORD", "kafka-secret")
    monkeypatch.setenv("STOCKFLOW_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STOCKFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STOCKFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STOCKFLOW_REDIS_URL", "redis://:pw-123@cache:6379/0")
    s = Settings()
    text = repr(s) + str(s) + s.model_dump_json()
    for secret in ("hunter2", "kafka-secret", "pw-123"):
        assert secret not in text
    conf = s.confluent_config()
    assert conf["sasl.password"] == "kafka-secret"
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.partitions = 3  # type: ignore[misc]


def test_invalid_values_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKFLOW_PROCESSING_GUARANTEE", "maybe_once")
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_topic_prefix() -> None:
    assert Settings(topic_prefix="t1.").topic("inventory.deltas") == "t1.inventory.deltas"
