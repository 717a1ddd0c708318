"""Where sources put deltas and dead letters: Kafka (acknowledged) or memory (unit tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.delta_producer import DeltaProducer


class KafkaEmitter:
    """Deltas to `inventory.deltas` keyed supplier|sku, dead letters to `inventory.deadletter`
    keyed by the original key (or the supplier); returns once Kafka acknowledged both."""

    def __init__(self, deltas: DeltaProducer, dead_letters: DeltaProducer) -> None:
        self.deltas = deltas
        self.dead_letters = dead_letters

    @classmethod
    def create(cls, config: dict[str, Any], *, deltas_topic: str,
               dead_letter_topic: str) -> KafkaEmitter:
        return cls(DeltaProducer(config, deltas_topic),
                   DeltaProducer(config, dead_letter_topic, record="DeadLetter"))

    async def emit(self, deltas: list[dict[str, Any]],
                   dead_letters: list[dict[str, Any]]) -> None:
        sends = [self.deltas.send(deltas)] if deltas else []
        sends += [self.dead_letters.send([d], key=d["original_key"] or
                                         str(d["supplier_id"]).encode()) for d in dead_letters]
        if sends:
            await asyncio.gather(*sends)

    def close(self) -> None:
        self.deltas.close()
        self.dead_letters.close()


class MemoryEmitter:
    """Collects what would be sent; `fail_after` emits raise after that many calls (crashes)."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.deltas: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.calls = 0
        self.fail_after = fail_after

    async def emit(self, deltas: list[dict[str, Any]],
                   dead_letters: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ConnectionError("emitter failing on purpose")
        self.deltas.extend(deltas)
        self.dead_letters.extend(dead_letters)
