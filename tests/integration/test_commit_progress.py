"""Committed offsets keep up with what was processed on the transactional internal topics.

inventory.stock-updates and inventory.changes are written in transactions, so each commit of
each writer leaves a marker in every partition it wrote. Faust's own commit step passed at
most one marker per commit (pipeline/offsets.py): under load, a partition that received
markers faster than its reader committed fell further behind for as long as the load
lasted, though every record was processed (2,300 offsets after 20 s at 400 events/s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.end_to_end import Sender
from bench.workload import Workload, WorkloadSpec, send_open_loop
from tests.integration.pipeline_harness import PipelineEnv

pytestmark = pytest.mark.integration

TOPICS = ("inventory.deltas", "inventory.stock-updates", "inventory.changes")


def offsets_behind(env: PipelineEnv, logical: str) -> int:
    """End offset minus committed offset, summed over partitions (markers included)."""
    from confluent_kafka import Consumer, TopicPartition

    topic = env.topic(logical)
    consumer = Consumer({**env.settings.confluent_config(), "group.id": env.name,
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(consumer.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0)
                   for tp in committed)
    finally:
        consumer.close()


def test_commits_keep_up_with_transaction_markers(tmp_path: Path) -> None:
    env = PipelineEnv(tmp_path, extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                                           "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    try:
        env.start_worker()
        env.wait_until(lambda: "Worker ready" in env.worker_log(), 120, "the worker to start")
        sender = Sender(env)
        workload = Workload(WorkloadSpec(skus=20000, suppliers=10))
        behind = []
        # Several source partitions' transactions write each stock-updates partition between
        # two commits of its reader: more markers arrive than one per commit.
        for _ in range(4):
            send_open_loop(sender, workload, rate=400, duration_s=5)
            sender.producer.flush(10)
            env.assert_worker_alive()
            behind.append(offsets_behind(env, "inventory.stock-updates"))
        sender.producer.close()
        assert sender.sent == 8000
        # Under load the committed offsets stay close behind: a few commit intervals' worth
        # of records and markers (about 100 here), not a backlog that grows with the load.
        assert max(behind[2:]) < 600, behind
        # Drained: every topic's committed offset is at its end (only markers after it).
        env.wait_until(lambda: all(env.lag(t) == 0 for t in TOPICS), 40,
                       "committed offsets to reach the end of every input")
    finally:
        env.cleanup()
