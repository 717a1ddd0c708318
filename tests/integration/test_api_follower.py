"""The API follower's Redis write of reserved units, against the real Redis.

A batch of decisions writes each SKU's newest decision once (the compare-and-set on the
decision sequence keeps Redis at the newest, whatever order batches come in), and every
decision of the batch still reaches the event loop (the waiting requests and the stream).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis

from connectors.api.follower import _ATP_SCRIPT, DecisionFollower, atp_key
from pipeline.settings import Settings
from schemas.codec import codec_for

pytestmark = pytest.mark.integration


class Record:
    """A consumed record as confluent-kafka hands it over (no error)."""

    def __init__(self, topic: str, value: bytes) -> None:
        self._topic, self._value = topic, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


def decision(sku: str, sequence: int, held: int) -> dict[str, Any]:
    return {"command_id": f"{sku}-{sequence}", "platform_sku": sku, "reservation_id": None,
            "kind": "HOLD", "outcome": "GRANTED", "quantity": 1, "available": 100 - held,
            "supplier_total": 100, "held": held, "confirmed_pending": 0, "expires_at": None,
            "supplier_id": None, "replayed": False, "sequence": sequence, "decided_at": 0,
            "reason": None}


def test_each_skus_newest_decision_is_written_and_every_decision_delivered() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    settings = Settings(redis_cache_key_prefix=prefix, topic_prefix=prefix)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(),
                                  decode_responses=True)
    loop = asyncio.new_event_loop()
    delivered: list[tuple[str, int]] = []
    follower = DecisionFollower(
        settings, loop, on_decision=lambda d: delivered.append((d["platform_sku"],
                                                                 d["sequence"])),
        on_change=lambda _c: None)
    codec = codec_for("ReservationDecision")
    topic = settings.topic("reservations.decisions")
    batch = [decision("A", n, n) for n in range(1, 51)] + \
        [decision("B", n, 2 * n) for n in (3, 1, 2)]  # B's newest comes first
    try:
        script = client.register_script(_ATP_SCRIPT)
        follower._handle([Record(topic, codec.encode(d)) for d in batch], script)
        assert client.hgetall(atp_key(prefix, "A")) == {
            "sequence": "50", "reserved": "50", "held": "50", "confirmed_pending": "0",
            "supplier_total": "100"}
        assert client.hget(atp_key(prefix, "B"), "sequence") == "3"
        assert client.hget(atp_key(prefix, "B"), "reserved") == "6"
        # An older decision in a later batch leaves the newer one in place.
        follower._handle([Record(topic, codec.encode(decision("A", 10, 10)))], script)
        assert client.hget(atp_key(prefix, "A"), "sequence") == "50"
        loop.run_until_complete(asyncio.sleep(0))
        assert delivered == [(d["platform_sku"], d["sequence"]) for d in batch] + [("A", 10)]
    finally:
        loop.close()
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()
