"""The worker's transactional producers get stockflow's transaction timeout, not Kafka's 60 s."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.transport.drivers import aiokafka as driver

from pipeline.app import settings  # importing the app installs the transaction settings


def test_transactional_producers_use_the_configured_transaction_timeout() -> None:
    def producer(in_transaction: bool) -> Any:
        conf = SimpleNamespace(stockflow_txn_timeout_ms=settings.transaction_timeout_s * 1000)
        return SimpleNamespace(app=SimpleNamespace(in_transaction=in_transaction, conf=conf))

    extra = driver.Producer._settings_extra(producer(True))
    assert extra["transaction_timeout_ms"] == int(settings.transaction_timeout_s * 1000)
    assert extra["transaction_timeout_ms"] != 60_000  # not Kafka's default
    assert "transaction_timeout_ms" not in driver.Producer._settings_extra(producer(False))
