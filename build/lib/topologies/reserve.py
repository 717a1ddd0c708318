"""Agent reserve: reservations.commands -> reservations table -> reservations.decisions + orders
(+ an InventoryChange, cause RESERVATION, on inventory.changes for every change of the units
held or confirmed).

The one writer of a platform SKU's available-to-promise. reservations.commands is keyed by
platform SKU with the partition count of inventory.stock-updates, so the range assignment
gives this worker partition p of both: the SKU's supplier total is read straight from the
`availability` table of the aggregate agent (same process, same partition, values that
include the current, not yet committed batch) and no second copy of it is kept. Commands
are decided one record at a time in log order by the pure step of `pipeline.reservations`
(a SKU's state is copied into a `Book` at its first command of a batch, decided there, and
set in the table once at the end of the batch); the decisions, orders, table writes and
input offsets commit in one Kafka transaction. Under exactly-once the commands are consumed
and committed by a lane of their own (`reservation_lane`, topologies/runtime/lane.py): a
shopper's hold waits for no supplier record, neither for a poll's processing nor for the
aggregate's Cassandra write.

Ticks (records without a key, sent by the API to every partition) move a partition's clock
on: the SKUs whose next expiry or reflection bound has passed are found in the partition's
deadline index, stored in this table under a key no SKU can have (`\\x00deadlines`). A tick
keyed by one SKU (the API sends one when the suppliers' total of a SKU with confirmed sales
changed) moves that SKU's clock, so a snapshot that reflects a sale is seen at once.
"""

from __future__ import annotations

from typing import Any

from pipeline import metrics
from pipeline.errors import SchemaError
from pipeline.log import get_logger
from pipeline.reservations import (
    TICK,
    Book,
    ReservationOutputs,
    ReservationRules,
    SupplierView,
    reservation_change,
)
from pipeline.topics import (
    CHANGES,
    DEADLETTER,
    ORDERS,
    RESERVATION_COMMANDS,
    RESERVATION_DECISIONS,
)
from pipeline.validate import dead_letter, dead_letter_key
from schemas.codec import codec_for
from topologies.aggregate import availability
from topologies.app import app, avro_table, settings
from topologies.runtime import InputBatches

log = get_logger(__name__)

reservations = avro_table("reservations", "ReservationState",
                          help="holds, confirmed sales and answers per platform_sku")
commands = InputBatches(app, topic=settings.topic(RESERVATION_COMMANDS.name),
                        table=reservations,
                        lane="reservations" if settings.reservation_lane == "own" else "",
                        # at-least-once has no lanes: there, decided and committed first
                        commit_first=settings.reservation_lane in ("own", "first"))

DECISIONS_TOPIC = settings.topic(RESERVATION_DECISIONS.name)
ORDERS_TOPIC = settings.topic(ORDERS.name)
DEADLETTER_TOPIC = settings.topic(DEADLETTER.name)
CHANGES_TOPIC = settings.topic(CHANGES.name)
DEADLINES_KEY = b"\x00deadlines"

RULES = ReservationRules(
    default_ttl_ms=int(settings.reservation_default_ttl_s * 1000),
    max_ttl_ms=int(settings.reservation_max_ttl_s * 1000),
    reflect_bound_ms=int(settings.reservation_reflect_bound_s * 1000),
    answer_ttl_ms=int(settings.reservation_answer_ttl_s * 1000),
    max_answers=settings.reservation_max_answers,
)
_COMMAND = codec_for("ReservationCommand")
_DECISION = codec_for("ReservationDecision")
_ORDER = codec_for("Order")
_CHANGE = codec_for("InventoryChange")
_DEAD_LETTER = codec_for("DeadLetter")


class _Deadlines:
    """The deadline index of the partitions a batch touched, written back once per batch."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, Any]] = {}
        self.dirty: set[int] = set()

    def of(self, partition: int) -> dict[str, int]:
        index = self.parts.get(partition)
        if index is None:
            stored = reservations.get_in(partition, DEADLINES_KEY)
            index = {"platform_sku": "", "clock": 0, "sequence": 0, "holds": {},
                     "confirmed": {}, "answers": {}, "closed": {},
                     "deadlines": dict(stored["deadlines"]) if stored else {}}
            self.parts[partition] = index
        deadlines: dict[str, int] = index["deadlines"]
        return deadlines

    def note(self, partition: int, sku: str, deadline: int | None) -> None:
        deadlines = self.of(partition)
        if deadlines.get(sku) != deadline:
            if deadline is None:
                deadlines.pop(sku, None)
            else:
                deadlines[sku] = deadline
            self.dirty.add(partition)

    def write(self) -> None:
        for partition in self.dirty:
            reservations.set_in(partition, DEADLINES_KEY, self.parts[partition])


class _Books:
    """The Books of the SKUs a batch touched: each SKU's state copied once, at its first
    command, and set in the table once, when the batch is done. The deadline index is noted
    after every command, as a tick later in the batch reads it: what a tick touches must not
    depend on where a batch happened to end, or a replay would decide otherwise."""

    def __init__(self, deadlines: _Deadlines, now_ms: int) -> None:
        self.deadlines = deadlines
        self.now_ms = now_ms
        self.changes: list[dict[str, Any]] = []  # InventoryChanges (cause RESERVATION)
        self.books: dict[tuple[int, bytes], tuple[str, Book]] = {}
        self.views: dict[tuple[int, bytes], tuple[Any, SupplierView]] = {}

    def decide(self, partition: int, sku: str, command: dict[str, Any], at_ms: int,
               out: ReservationOutputs) -> None:
        key = sku.encode()
        entry = self.books.get((partition, key))
        if entry is None:
            entry = self.books[(partition, key)] = (
                sku, Book(reservations.get_in(partition, key), sku))
        book = entry[1]
        first = len(out.decisions)
        record, view = self._view(partition, key)
        book.apply(command, at_ms, view, RULES, out)
        self.deadlines.note(partition, sku, book.next_deadline())
        if len(out.decisions) > first:
            for decision in out.decisions[first:]:
                change = reservation_change(decision, record, self.now_ms)
                if change is not None:
                    self.changes.append(change)

    def _view(self, partition: int, key: bytes) -> tuple[Any, SupplierView]:
        """The SKU's Availability record and the view of it a decision needs."""
        # A batch is decided without an await, so no other agent changes the table meanwhile;
        # the aggregate sets a new record when it changes one (fold_updates), never mutates it.
        record = availability.get_in(partition, key)
        cached = self.views.get((partition, key))
        if cached is not None and cached[0] is record:
            return cached
        pair = (record, SupplierView.of(record))
        self.views[(partition, key)] = pair
        return pair

    def write(self) -> None:
        for (partition, key), (_sku, book) in self.books.items():
            reservations.set_in(partition, key, book.state)


def handle_batch(records: list[Any], send: Any, now_ms: int) -> ReservationOutputs:
    """Decide a batch of command records in log order and send what the decisions emit."""
    out = ReservationOutputs()
    deadlines = _Deadlines()
    books = _Books(deadlines, now_ms)
    for msg in records:
        partition = msg.partition()
        ts = msg.timestamp()[1]
        at_ms = ts if ts > 0 else now_ms
        try:
            command = _COMMAND.decode(msg.value() or b"")
        except SchemaError as exc:
            _reject(msg, "decode_error", str(exc), at_ms, send)
            continue
        if command["kind"] == TICK and not command["platform_sku"]:
            due = sorted(sku for sku, when in deadlines.of(partition).items() if when <= at_ms)
            for sku in due:
                books.decide(partition, sku, command, at_ms, out)
            continue
        sku = command["platform_sku"]
        if msg.key() is None or msg.key() != sku.encode() or not sku:
            _reject(msg, "key_mismatch", "a command's key must be its platform_sku", at_ms, send)
            continue
        books.decide(partition, sku, command, at_ms, out)
    books.write()
    deadlines.write()
    encode = _DECISION.encode
    for decision in out.decisions:
        send(DECISIONS_TOPIC, decision["platform_sku"].encode(), encode(decision), None)
        metrics.EVENTS.labels("reserve", decision["outcome"].lower()).inc()
    for order in out.orders:
        key = (order["supplier_id"] or order["platform_sku"]).encode()
        send(ORDERS_TOPIC, key, _ORDER.encode(order), None)
    # Every change of available-to-promise is an InventoryChange too, for inventory.changes'
    # consumers (docs/contract.md, "Reservations and available-to-promise").
    encode = _CHANGE.encode
    for change in books.changes:
        send(CHANGES_TOPIC, change["platform_sku"].encode(), encode(change), None)
    metrics.EVENTS.labels("reserve", "inventory_change").inc(len(books.changes))
    return out


def _reject(msg: Any, reason: str, message: str, at_ms: int, send: Any) -> None:
    """A command stockflow cannot read is a dead letter with its reason; the stream goes on."""
    metrics.DEAD_LETTERS.labels(reason).inc()
    metrics.DROPPED.labels(f"reserve:{reason}").inc()
    log.warning("reserve.dead_lettered", reason=reason, detail=message, topic=msg.topic(),
                partition=msg.partition(), offset=msg.offset())
    record = dead_letter(reason=reason, message=message, original=msg.value() or b"",
                         original_key=msg.key(), source_topic=msg.topic(),
                         source_partition=msg.partition(), source_offset=msg.offset(),
                         source_timestamp=at_ms, now_ms=at_ms)
    send(DEADLETTER_TOPIC, dead_letter_key(msg.key()), _DEAD_LETTER.encode(record), None)


@app.agent(commands, name="reserve")
async def reserve(batches: Any) -> Any:
    """Decide reservation commands, a batch at a time, per platform SKU in log order."""
    async for batch in batches:
        async with batch:
            batch.result = len(handle_batch(batch.records, batch.send, batch.now_ms).decisions)
        yield batch.result
