"""The native stack launcher: prerequisites, configs and PID ownership, without starting a JVM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import PrerequisiteMissing
from pipeline.settings import Settings
from pipeline.shell import stack as stack_mod
from pipeline.shell.stack import LocalStack


def test_missing_prerequisites_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_mod.shutil, "which", lambda name: None)
    with pytest.raises(PrerequisiteMissing) as exc:
        LocalStack.check_prerequisites()
    text = str(exc.value)
    assert "apt-get install -y openjdk-17-jre-headless" in text
    assert "apt-get install -y maven" in text
    assert "apt-get install -y redis-server" in text


def test_only_redis_needs_only_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_mod.shutil, "which",
                        lambda name: None if name == "redis-server" else f"/usr/bin/{name}")
    with pytest.raises(PrerequisiteMissing, match="redis-server"):
        LocalStack.check_prerequisites(["redis"])
    LocalStack.check_prerequisites(["kafka"]) if stack_mod.shutil.which("java") else None


def test_pid_of_foreign_process_is_not_ours(tmp_path: Path) -> None:
    stack = LocalStack(Settings(stack_dir=tmp_path / "stack"))
    stack.run_dir.mkdir(parents=True)
    # Our own test process is alive but was not started by the stack: never claimed, never killed.
    stack.pid_file("kafka").write_text(str(os.getpid()))
    assert stack.read_pid("kafka") is None
    assert stack.down(["kafka"]) == []
    assert not stack.pid_file("kafka").exists()


def test_kafka_config_is_single_node_kraft(tmp_path: Path) -> None:
    props = stack_mod._kafka_properties(tmp_path)
    assert "process.roles=broker,controller" in props
    assert "controller.quorum.voters=1@127.0.0.1:9093" in props
    assert "transaction.state.log.min.isr=1" in props
    assert f"log.dirs={tmp_path}" in props


def test_cassandra_yaml_binds_loopback(tmp_path: Path) -> None:
    import yaml

    conf = yaml.safe_load(stack_mod._cassandra_yaml(tmp_path))
    assert conf["listen_address"] == conf["rpc_address"] == "127.0.0.1"
    assert conf["native_transport_port"] == 9042
    assert conf["data_file_directories"] == [f"{tmp_path}/data"]


def test_pom_pins_versions() -> None:
    pom = stack_mod._pom("kafka", stack_mod._KAFKA_DEPS)
    assert f"<version>{stack_mod.KAFKA_VERSION}</version>" in pom
    assert "<packaging>pom</packaging>" in pom


def test_cluster_ids_are_kafka_uuids_that_never_begin_with_a_dash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import uuid

    # The first draw encodes to an id beginning with '-' (0xf8 -> '-' in URL-safe base64).
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(stack_mod.uuid, "uuid4", lambda: next(draws))
    cid = stack_mod._kafka_cluster_id()
    assert cid == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")
    monkeypatch.undo()
    for _ in range(500):
        cid = stack_mod._kafka_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16
