"""Prometheus views of the batch runtime, computed when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

UNCOMMITTED = "stockflow_uncommitted_offsets"


class UncommittedOffsetsCollector(Collector):
    """How far processing ran past the committed offset, per assigned input partition: a few
    commit intervals' worth while commits keep up; grows while a partition is processed but
    its commits fail or fall behind."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            UNCOMMITTED, "offsets processed past the committed offset, per input partition",
            labels=["topic", "partition"])

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        runtime = getattr(self.app, "runtime", None)
        if runtime is not None:
            for (topic, partition), count in sorted(runtime.uncommitted().items()):
                family.add_metric([topic, str(partition)], count)
        yield family
