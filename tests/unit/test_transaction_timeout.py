"""The worker's transactional producers get stockflow's transaction timeout, not Kafka's 60 s."""

from __future__ import annotations

import asyncio

from pipeline.app import app, settings


def test_transactional_producers_use_the_configured_transaction_timeout() -> None:
    async def timeout_ms() -> int:
        producer = app.producer._new_producer(transactional_id="stockflow-test")
        return int(producer._txn_manager.transaction_timeout_ms)

    was = app.in_worker
    app.in_worker = True  # transactions exist only inside a worker
    try:
        assert app.in_transaction  # the default guarantee: exactly-once
        assert asyncio.run(timeout_ms()) == int(settings.transaction_timeout_s * 1000)
        assert settings.transaction_timeout_s * 1000 != 60_000
    finally:
        app.in_worker = was
