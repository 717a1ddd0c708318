"""A consumed Kafka record as confluent-kafka hands it to an agent, for agent tests."""

from __future__ import annotations

import time

NOW = int(time.time() * 1000)


class Msg:
    """A consumed record as confluent-kafka hands it over."""

    def __init__(self, topic: str, key: bytes | None, value: bytes, offset: int,
                 partition: int = 0, ts: int = NOW) -> None:
        self._t, self._k, self._v, self._o, self._p, self._ts = \
            topic, key, value, offset, partition, ts

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes:
        return self._v

    def offset(self) -> int:
        return self._o

    def partition(self) -> int:
        return self._p

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)
