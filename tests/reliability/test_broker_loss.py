"""Case 2: on the three-broker cluster (`stockflow stack up --brokers 3`), topics replicated 3
with min.insync.replicas 2; the broker that coordinates the worker's consumer group SIGKILLed
under load and restarted, then (full suite) the broker of the active controller. The end
state is the reference model's.

When the group coordinator's broker dies, librdkafka 2.16 often gets FENCED_INSTANCE_ID for
the worker's own static group.instance.id (a fatal consumer error), and its
send_offsets_to_transaction can wait for ever for the dead coordinator. The worker then stops:
on the fatal error without committing, in the call that never returns at the call's deadline
(exit code 70). The test restarts a worker that exited, as a supervisor would, and checks
that nothing was lost or written twice (docs/reliability.md, "Workers, brokers and stores
under faults")."""

from __future__ import annotations

import contextlib
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv
from pipeline.settings import Settings
from pipeline.shell.stack import KafkaCluster
from tests.reliability.chaos import (
    ChaosWorker,
    Feeder,
    Supervisor,
    check_and_record,
    full,
    lag,
    stop_all,
    wait_for,
    workload,
)

PARTITIONS = 6
# After a fatal Kafka error the worker exits at once (nothing to commit); if a Kafka call never
# returns, at its deadline. Longer than that: the worker hangs.
FATAL_TO_EXIT_S = 60.0


@pytest.fixture(scope="module")
def cluster() -> Any:
    """The 3-broker cluster, started if it is not running (and then stopped afterwards)."""
    c = KafkaCluster(Settings(), brokers=3)
    was_up = c.live_brokers() == 3
    c.up(timeout=300)
    yield c
    if not was_up:
        c.down()
    else:
        for node in c.nodes:  # leave it as it was found: every broker running
            c.start_broker(node)


@pytest.fixture
def env(tmp_path: Path, cluster: KafkaCluster) -> Any:
    e = PipelineEnv(tmp_path, partitions=PARTITIONS, extra_env={
        "STOCKFLOW_KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "STOCKFLOW_KAFKA_REPLICATION_FACTOR": "3",
        "STOCKFLOW_KAFKA_MIN_INSYNC_REPLICAS": "2",
        "STOCKFLOW_SINK_ENABLED": "false", "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    yield e
    e.cleanup()


def assert_replicated(env: PipelineEnv) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(env.settings.confluent_config())
    topics = admin.list_topics(timeout=10).topics
    for name in (env.topic("inventory.deltas"), f"{env.settings.app_id}-stock-changelog"):
        assert {len(p.replicas) for p in topics[name].partitions.values()} == {3}, name
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        conf = admin.describe_configs([res])[res].result(timeout=10)
        assert conf["min.insync.replicas"].value == "2", name


def group_coordinator(env: PipelineEnv) -> int | None:
    """The node id of the broker coordinating the worker's consumer group."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(env.settings.confluent_config())
    fut = admin.describe_consumer_groups([env.settings.app_id])[env.settings.app_id]
    with contextlib.suppress(Exception):
        return int(fut.result(timeout=10).coordinator.id)
    return None


def test_broker_sigkilled_under_load_and_restarted(env: PipelineEnv,
                                                    cluster: KafkaCluster) -> None:
    rng = random.Random(int(time.time()))
    valid, malformed = workload(71, 20_000)
    worker = ChaosWorker(env, "worker")
    supervisor = Supervisor([worker])  # restarts the worker when it exits, at any time
    faults: list[str] = []
    try:
        worker.start()
        wait_for(lambda: worker.assigned() > 0, 180, "worker assigned", [worker])
        assert_replicated(env)
        supervisor.start()
        feeder = Feeder(env, valid, malformed, chunks=16, pause_s=0.8)
        feeder.start()
        controller = cluster.controller()
        coordinator = group_coordinator(env) or rng.choice(list(cluster.nodes))
        victims = [coordinator] + ([controller] if full() and controller and
                                   controller != coordinator else [])
        first_kill = 0.0
        for node in victims:
            wait_for(lambda n=feeder.sent_chunks: feeder.sent_chunks >= n + 2, 120, "load",
                     [worker])
            role = "+".join(r for r, n in (("group coordinator", coordinator),
                                           ("controller", controller)) if n == node)
            assert cluster.stop_broker(node, signal.SIGKILL)
            down_at = time.monotonic()
            first_kill = first_kill or down_at
            wait_for(lambda n=feeder.sent_chunks: feeder.sent_chunks >= n + 3, 120,
                     "load with a broker down", [worker])
            cluster.start_broker(node)
            wait_for(lambda: cluster.live_brokers() == 3, 180, "the broker back", [worker])
            faults.append(f"{role} {node} SIGKILL, back after "
                          f"{time.monotonic() - down_at:.0f}s")
        lag_at_end = lag(env)
        feeder.finish()
        fatal_seen: float | None = None
        started = time.monotonic()

        def converged() -> bool:
            # A worker alive after a fatal Kafka error must stop (and be restarted): the
            # runtime aborts instead of committing, and a Kafka call that never returns ends
            # the process at its deadline (send_offsets_to_transaction: 20 s + 15 s margin).
            nonlocal fatal_seen
            if worker.running and "Fatal error" in worker.logs[-1].read_text(errors="replace"):
                fatal_seen = fatal_seen or time.monotonic()
                assert time.monotonic() - fatal_seen < FATAL_TO_EXIT_S, \
                    f"the worker logged a fatal Kafka error and neither stopped nor went " \
                    f"on:\n{worker.text()}"
            else:
                fatal_seen = None
            return lag(env) == 0

        wait_for(converged, 240, "the worker to consume everything", [worker])
        converge_s = time.monotonic() - started
        supervisor.stop()
        assert worker.running, worker.text()  # converged and still up, not crash-looping
        check_and_record(
            "2 broker loss (3 brokers)", "; ".join(faults), env, valid, malformed,
            converge_s=converge_s, lag_at_chaos_end=lag_at_end,
            extra={"aborts_logged": len(worker.events("runtime.rewound")),
                   "worker_restarts": len(supervisor.exits),
                   "exit_codes": [code for _, code, _ in supervisor.exits],
                   "exits_after_kill_s": [round(at - first_kill, 1)
                                          for _, _, at in supervisor.exits],
                   "fenced": sum("Static consumer fenced" in p.read_text(errors="replace")
                                 for p in worker.logs),
                   "stuck_calls": [(e["call"], e["seconds"])
                                   for e in worker.events("runtime.kafka_call_stuck")],
                   "from_first_kill_s": round(time.monotonic() - first_kill, 1)})
    finally:
        supervisor.stop()
        stop_all([worker])
