"""Before a commit every buffered changelog record is handed to its producer, however slow."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from pipeline import transactions


def test_drain_waits_for_slow_sends_that_faust_flush_gives_up_on() -> None:
    transactions.install(SimpleNamespace(transport=SimpleNamespace(), conf=SimpleNamespace()))
    sent: list[int] = []
    slow = asyncio.Event()

    async def send(self: Any, fut: int) -> None:
        if fut == 2:
            await slow.wait()  # a producer waiting for room in its batch accumulator
        await asyncio.sleep(0.01)
        sent.append(fut)

    async def scenario() -> None:
        # The unwrapped send is replaced for this test only; the wrapper counts it.
        original = ProducerBuffer._send_pending
        ProducerBuffer._send_pending = transactions._count_sends(send)  # type: ignore[method-assign]
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        try:
            await buffer.start()
            for i in range(5):
                buffer.put(i)  # type: ignore[arg-type]
            await buffer.flush()  # Faust's flush gives up after 0.1 s without a send
            assert sent == [0, 1]
            asyncio.get_running_loop().call_later(0.3, slow.set)
            await asyncio.wait_for(transactions.drain_producer_buffer(buffer, poll_s=0.05), 5)
            assert sent == [0, 1, 2, 3, 4]
            assert buffer.size == 0 and buffer._stockflow_sending == 0  # type: ignore[attr-defined]
        finally:
            ProducerBuffer._send_pending = original  # type: ignore[method-assign]
            await buffer.stop()

    asyncio.run(scenario())
