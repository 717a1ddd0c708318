"""The runtime stops on librdkafka's fatal consumer error as consume() delivers it: a message
error of code _FATAL whose fatal() is False (seen after the group coordinator's broker died)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from topologies.runtime.txn import CallDeadlines, FatalRuntimeError
from topologies.runtime.worker import BatchRuntime


def test_a_fatal_code_message_error_stops_the_worker() -> None:
    rt = BatchRuntime.__new__(BatchRuntime)
    rt._callback_error = None
    rt.assignment = set()
    rt.deadlines = CallDeadlines(15.0, lambda *_: None)
    fenced = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by "
                        "other consumer with same group.instance.id")
    assert not fenced.fatal()  # how confluent-kafka hands it over

    class Consumer:
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            return [SimpleNamespace(error=lambda: fenced)]

    rt.consumer = Consumer()
    with pytest.raises(FatalRuntimeError, match="_FATAL"):
        rt._poll(10, 0.01)
