"""Agent reserve on in-process batches: decisions against the availability table, ticks
through the deadline index, dead letters for commands it cannot read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import codec_for
from tests.agents.records import Msg
from topologies import aggregate as aggregate_mod
from topologies import reserve
from topologies.app import settings

NOW = int(time.time() * 1000)
COMMANDS = settings.topic("reservations.commands")
_CODECS = {"reservations.decisions": "ReservationDecision", "reservations.orders": "Order",
           "inventory.deadletter": "DeadLetter", "inventory.changes": "InventoryChange"}


def command_msg(key: bytes | None, value: bytes, offset: int, ts: int,
                partition: int = 0) -> Msg:
    """A record of the reservation commands topic."""
    return Msg(COMMANDS, key, value, offset, partition=partition, ts=ts)


class Sent(list[tuple[str, bytes | None, Any]]):
    def __call__(self, topic: str, key: bytes | None, value: bytes,
                 partition: int | None, headers: Any = None) -> None:
        logical = topic.removeprefix(settings.topic_prefix)
        self.append((logical, key, codec_for(_CODECS[logical]).decode(value)))

    def of(self, logical: str) -> list[Any]:
        return [v for t, _, v in self if t == logical]


@pytest.fixture(autouse=True)
def tables(tmp_path: Path) -> Iterator[None]:
    for table in (reserve.reservations, aggregate_mod.availability):
        table.tabledir = tmp_path
        for p in range(settings.partitions):
            table.open_partition(p)
    aggregate_mod.availability.set_in(0, b"P-1", {
        "platform_sku": "P-1", "total": 3, "best_supplier": "s1", "suppliers": {"s1": {
            "sku": "A-1", "quantity": 3, "version": 1, "status": "ACTIVE",
            "lead_time_days": None, "updated_at": NOW, "snapshot_at": NOW - 10}}})
    yield
    for table in (reserve.reservations, aggregate_mod.availability):
        table.close_all()


def command(kind: str, n: int, *, sku: str = "P-1", rid: str | None = None, quantity: int = 0,
            ttl_ms: int = 0) -> bytes:
    return codec_for("ReservationCommand").encode({
        "command_id": f"c{n}", "kind": kind, "platform_sku": sku if kind != "TICK" else "",
        "reservation_id": rid, "quantity": quantity, "ttl_ms": ttl_ms,
        "idempotency_key": None, "requested_at": NOW})


def test_holds_decided_against_availability_and_expired_by_ticks() -> None:
    sent = Sent()
    reserve.handle_batch([
        command_msg(b"P-1", command("HOLD", 1, rid="r1", quantity=2, ttl_ms=1000), 0, NOW),
        command_msg(b"P-1", command("HOLD", 2, rid="r2", quantity=2), 1, NOW + 1),
        command_msg(None, command("TICK", 3), 2, NOW + 999),
    ], sent, NOW)
    assert [(d["outcome"], d["available"]) for d in sent.of("reservations.decisions")] == [
        ("GRANTED", 1), ("SOLD_OUT", 1)]
    # The grant is an InventoryChange too (the refusal changed nothing): the best supplier's
    # entry repeated as it is (same version), available-to-promise in the reservation fields.
    (granted,) = sent.of("inventory.changes")
    assert {k: granted[k] for k in (
        "platform_sku", "cause", "supplier_id", "sku", "version", "quantity_before",
        "quantity_after", "total_available", "available_to_promise", "held",
        "confirmed_pending", "reservation_id", "reservation_outcome")} == {
        "platform_sku": "P-1", "cause": "RESERVATION", "supplier_id": "s1", "sku": "A-1",
        "version": 1, "quantity_before": 3, "quantity_after": 3, "total_available": 3,
        "available_to_promise": 1, "held": 2, "confirmed_pending": 0, "reservation_id": "r1",
        "reservation_outcome": "GRANTED"}
    assert [k for t, k, _ in sent if t == "inventory.changes"] == [b"P-1"]
    index = reserve.reservations.get_in(0, reserve.DEADLINES_KEY)
    assert index["deadlines"] == {"P-1": NOW + 1000}
    sent.clear()
    reserve.handle_batch([command_msg(None, command("TICK", 4), 3, NOW + 1000)], sent, NOW)
    assert [(d["kind"], d["reservation_id"], d["available"])
            for d in sent.of("reservations.decisions")] == [("EXPIRE", "r1", 3)]
    assert [(c["reservation_outcome"], c["available_to_promise"], c["held"],
             c["reservation_sequence"]) for c in sent.of("inventory.changes")] == [
        ("EXPIRED", 3, 0, 3)]
    assert reserve.reservations.get_in(0, reserve.DEADLINES_KEY)["deadlines"] == {}


def test_confirm_emits_one_order_for_the_best_supplier() -> None:
    sent = Sent()
    reserve.handle_batch([
        command_msg(b"P-1", command("HOLD", 1, rid="r1", quantity=1), 0, NOW),
        command_msg(b"P-1", command("CONFIRM", 2, rid="r1"), 1, NOW + 5),
        command_msg(b"P-1", command("CONFIRM", 3, rid="r1"), 2, NOW + 6),
    ], sent, NOW)
    orders = sent.of("reservations.orders")
    assert [(o["order_id"], o["supplier_id"], o["sku"]) for o in orders] == [("r1", "s1", "A-1")]
    assert [k for t, k, _ in sent if t == "reservations.orders"] == [b"s1"]
    # Hold and confirm change available-to-promise's parts; the repeated confirm does not.
    assert [(c["reservation_outcome"], c["available_to_promise"], c["held"],
             c["confirmed_pending"]) for c in sent.of("inventory.changes")] == [
        ("GRANTED", 2, 1, 0), ("CONFIRMED", 2, 0, 1)]


def test_unreadable_and_misrouted_commands_are_dead_letters() -> None:
    sent = Sent()
    reserve.handle_batch([
        command_msg(b"P-1", b"\xc3\x01garbage", 0, NOW),
        command_msg(b"P-2", command("HOLD", 1, rid="r1", quantity=1), 1, NOW),
        command_msg(b"P-1", command("HOLD", 2, rid="r2", quantity=1), 2, NOW),
    ], sent, NOW)
    assert [d["reason"] for d in sent.of("inventory.deadletter")] == [
        "decode_error", "key_mismatch"]
    assert [d["outcome"] for d in sent.of("reservations.decisions")] == ["GRANTED"]
