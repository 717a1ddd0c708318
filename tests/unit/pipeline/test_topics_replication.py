"""Topics get the replication the cluster allows: the factor capped at the live brokers, and
min.insync.replicas from the settings capped at that factor."""

from __future__ import annotations

from pipeline.settings import Settings
from pipeline.topics import replication


def test_factor_and_min_insync_are_capped_by_the_cluster() -> None:
    s = Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)
    assert replication(s, brokers=3) == (3, {"min.insync.replicas": "2"})
    assert replication(s, brokers=1) == (1, {"min.insync.replicas": "1"})
    assert replication(s, brokers=5) == (3, {"min.insync.replicas": "2"})


def test_no_min_insync_setting_leaves_the_broker_default() -> None:
    assert replication(Settings(kafka_replication_factor=1), brokers=3) == (1, {})
