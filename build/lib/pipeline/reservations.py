"""Reservation decisions of one platform SKU as a pure step: (state, commands, view) -> state.

The shape of `pipeline/step.py`: `decide(state, [(command, record time)], supplier, rules,
outputs)` returns the SKU's new ReservationState and appends what it decided
(ReservationDecision records, Orders) to `outputs`. The agent (topologies/reserve.py) and the
tests are drivers of this one function.

Available-to-promise (ATP) = the suppliers' total - units in active holds - confirmed units
that no supplier feed has reflected yet, never below 0 when shown. A hold is granted only when
its quantity fits in the ATP. Time is the log's: the clock of a SKU is the newest record time
it has seen (commands and ticks), so a replay of the log decides what the first run decided.
Before each command the clock moves on: holds whose expiry has passed are released
(EXPIRE), and confirmed sales that a snapshot observed after the confirm has reflected, or
whose bound has passed, stop counting (REFLECT). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HOLD, CONFIRM, RELEASE, TICK = "HOLD", "CONFIRM", "RELEASE", "TICK"
EXPIRE, REFLECT = "EXPIRE", "REFLECT"
GRANTED, SOLD_OUT, CONFIRMED, RELEASED, EXPIRED = (
    "GRANTED", "SOLD_OUT", "CONFIRMED", "RELEASED", "EXPIRED")
REFLECTED, NOT_FOUND, ALREADY_CONFIRMED, INVALID = (
    "REFLECTED", "NOT_FOUND", "ALREADY_CONFIRMED", "INVALID")

MAX_QUANTITY = 1_000_000


@dataclass(frozen=True, slots=True)
class ReservationRules:
    """The knobs of the rule (from settings): TTLs, the reflection bound, what is remembered."""

    default_ttl_ms: int = 15 * 60 * 1000
    max_ttl_ms: int = 24 * 3600 * 1000
    reflect_bound_ms: int = 30 * 60 * 1000  # a confirmed sale counts at most this long
    answer_ttl_ms: int = 24 * 3600 * 1000  # idempotency keys and ended reservations
    max_answers: int = 10_000  # per SKU: bounds the state an untrusted client can grow


@dataclass(frozen=True, slots=True)
class SupplierView:
    """What the decision needs of the SKU's availability across suppliers."""

    total: int = 0
    best_supplier: str | None = None
    best_sku: str | None = None
    snapshot_at: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def of(cls, availability: dict[str, Any] | None) -> SupplierView:
        """The view of an Availability (schemas/availability.avsc); None: no supplier yet."""
        if availability is None:
            return cls()
        suppliers = availability["suppliers"]
        best = availability.get("best_supplier")
        return cls(total=max(0, int(availability["total"])), best_supplier=best,
                   best_sku=suppliers[best]["sku"] if best in suppliers else None,
                   snapshot_at={s: e.get("snapshot_at") for s, e in suppliers.items()})


@dataclass(slots=True)
class ReservationOutputs:
    """What a run of decisions emits, in decision order."""

    decisions: list[dict[str, Any]] = field(default_factory=list)  # ReservationDecision
    orders: list[dict[str, Any]] = field(default_factory=list)  # Order


def reservation_id(platform_sku: str, scope: str) -> str:
    """The id a hold gets: the SKU (so a confirm or release finds its partition) and a digest
    of what makes the request unique (the client and its idempotency key)."""
    sku = base64.urlsafe_b64encode(platform_sku.encode()).decode().rstrip("=")
    digest = hashlib.sha256(f"{platform_sku}\0{scope}".encode()).hexdigest()[:24]
    return f"{sku}.{digest}"


def sku_of_reservation(reservation: str) -> str | None:
    """The platform SKU a reservation id names, or None when it is not one of ours."""
    head, dot, digest = reservation.partition(".")
    if not dot or len(digest) != 24 or not head or len(head) > 200:
        return None
    if any(c not in "0123456789abcdef" for c in digest):
        return None
    try:
        sku = base64.b64decode(head + "=" * (-len(head) % 4), altchars=b"-_",
                               validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return sku or None


def empty_state(platform_sku: str) -> dict[str, Any]:
    """The ReservationState of a SKU nobody has reserved yet."""
    return {"platform_sku": platform_sku, "clock": 0, "sequence": 0, "holds": {},
            "confirmed": {}, "answers": {}, "closed": {}, "deadlines": {}}


def held(state: dict[str, Any]) -> int:
    return sum(h["quantity"] for h in state["holds"].values())


def confirmed_pending(state: dict[str, Any]) -> int:
    return sum(c["quantity"] for c in state["confirmed"].values())


def available(state: dict[str, Any], supplier: SupplierView) -> int:
    """Available-to-promise: total - held - confirmed not yet reflected (0 at least)."""
    return max(0, supplier.total - held(state) - confirmed_pending(state))


def next_deadline(state: dict[str, Any]) -> int | None:
    """When the clock next changes something by itself (an expiry or a reflection bound)."""
    times = [h["expires_at"] for h in state["holds"].values()]
    times += [c["release_at"] for c in state["confirmed"].values()]
    return min(times) if times else None


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    # The maps are replaced, never their records mutated: one level of copying suffices.
    return {**state, "holds": dict(state["holds"]), "confirmed": dict(state["confirmed"]),
            "answers": dict(state["answers"]), "closed": dict(state["closed"])}


class Book:
    """One SKU's ReservationState while commands are decided: a private copy of the state
    and what makes a command's cost independent of how many holds, sales and answers the SKU
    has. Copied once (per batch, in the agent); then a command costs O(log n) at most (a
    heap push), plus the holds and sales it ends:

    - the units held and the confirmed units pending, kept as running sums;
    - the holds' expiries in a heap (entries of ended holds are skipped when they surface);
    - the earliest reflection bound, and the earliest confirm of each supplier, so that the
      sales are looked at only when the clock or a supplier's snapshot reflects one;
    - answers and ended reservations forgotten from the front of their maps: both are
      written with the SKU's clock, which never goes back, so a map's order is time order.

    The decisions are those of the plain rule (held, available, next_deadline above):
    `tests/unit/pipeline/test_reservation_book.py` checks them against the step as it was.
    """

    __slots__ = ("expiries", "first_sale", "held", "pending", "release_due", "state")

    def __init__(self, state: dict[str, Any] | None, platform_sku: str) -> None:
        self.state = _copy(state) if state is not None else empty_state(platform_sku)
        holds = self.state["holds"]
        self.held = sum(h["quantity"] for h in holds.values())
        self.expiries = [(h["expires_at"], rid) for rid, h in holds.items()]
        heapq.heapify(self.expiries)
        self.pending = 0
        self.release_due: int | None = None
        self.first_sale: dict[str, int] = {}
        self._index_sales()

    def _index_sales(self) -> None:
        pending, due, first = 0, None, self.first_sale
        first.clear()
        for sale in self.state["confirmed"].values():
            pending += sale["quantity"]
            if due is None or sale["release_at"] < due:
                due = sale["release_at"]
            supplier = sale["supplier_id"] or ""
            at = first.get(supplier)
            if at is None or sale["confirmed_at"] < at:
                first[supplier] = sale["confirmed_at"]
        self.pending, self.release_due = pending, due

    def available(self, supplier: SupplierView) -> int:
        return max(0, supplier.total - self.held - self.pending)

    def next_deadline(self) -> int | None:
        """The state's next expiry or reflection bound (`next_deadline(self.state)`)."""
        expiries, holds = self.expiries, self.state["holds"]
        while expiries:  # drop the entries of holds that ended
            at, rid = expiries[0]
            hold = holds.get(rid)
            if hold is not None and hold["expires_at"] == at:
                break
            heapq.heappop(expiries)
        hold_due = expiries[0][0] if expiries else None
        if hold_due is None:
            return self.release_due
        if self.release_due is None:
            return hold_due
        return min(hold_due, self.release_due)

    def apply(self, command: dict[str, Any], at_ms: int, supplier: SupplierView,
              rules: ReservationRules, out: ReservationOutputs) -> None:
        """Decide one command at record time at_ms (a TICK only moves the clock)."""
        self.advance(at_ms, supplier, rules, out)
        kind = command["kind"]
        if kind == HOLD:
            _hold(self, command, supplier, rules, out)
        elif kind == CONFIRM:
            _confirm(self, command, supplier, rules, out)
        elif kind == RELEASE:
            _release(self, command, supplier, out)

    def advance(self, clock_ms: int, supplier: SupplierView, rules: ReservationRules,
                out: ReservationOutputs) -> None:
        """Move the clock to clock_ms (never back): expire holds, release reflected sales,
        forget answers older than the answer TTL."""
        state = self.state
        if clock_ms > state["clock"]:
            state["clock"] = clock_ms
        now = state["clock"]
        expiries = self.expiries
        if expiries and expiries[0][0] <= now:
            holds, closed = state["holds"], state["closed"]
            while expiries and expiries[0][0] <= now:  # in (expires_at, id) order
                at, rid = heapq.heappop(expiries)
                hold = holds.get(rid)
                if hold is None or hold["expires_at"] != at:
                    continue
                del holds[rid]
                self.held -= hold["quantity"]
                closed[rid] = {"outcome": EXPIRED, "supplier_id": None, "at": now}
                _emit(self, supplier, out, kind=EXPIRE, outcome=EXPIRED, command_id=None,
                      reservation=rid, quantity=hold["quantity"], expires_at=at)
        if self._reflects(now, supplier):
            confirmed = state["confirmed"]
            for rid, sale in sorted(confirmed.items(),
                                    key=lambda kv: (kv[1]["confirmed_at"], kv[0])):
                snapshot_at = supplier.snapshot_at.get(sale["supplier_id"] or "")
                if snapshot_at is not None and snapshot_at > sale["confirmed_at"]:
                    reason = "a snapshot observed after the confirm"
                elif sale["release_at"] <= now:
                    reason = "the reflection bound passed"
                else:
                    continue
                del confirmed[rid]
                self.pending -= sale["quantity"]
                _emit(self, supplier, out, kind=REFLECT, outcome=REFLECTED, command_id=None,
                      reservation=rid, quantity=sale["quantity"],
                      supplier_id=sale["supplier_id"], reason=reason)
            self._index_sales()
        horizon = now - rules.answer_ttl_ms
        cap = rules.max_answers
        for name in ("answers", "closed"):
            entries = state[name]
            while entries:
                first = next(iter(entries))
                if entries[first]["at"] > horizon and len(entries) <= cap:
                    break
                del entries[first]

    def _reflects(self, now: int, supplier: SupplierView) -> bool:
        """Whether some confirmed sale stops counting now (its bound, or a later snapshot)."""
        if self.release_due is not None and self.release_due <= now:
            return True
        snapshots = supplier.snapshot_at
        for supplier_id, first in self.first_sale.items():
            snapshot_at = snapshots.get(supplier_id)
            if snapshot_at is not None and snapshot_at > first:
                return True
        return False

    def add_hold(self, rid: str, quantity: int, expires_at: int, now: int) -> None:
        self.state["holds"][rid] = {"quantity": quantity, "expires_at": expires_at,
                                    "created_at": now}
        self.held += quantity
        heapq.heappush(self.expiries, (expires_at, rid))

    def end_hold(self, rid: str) -> dict[str, Any] | None:
        hold: dict[str, Any] | None = self.state["holds"].pop(rid, None)
        if hold is not None:
            self.held -= hold["quantity"]  # its heap entry is skipped when it surfaces
        return hold

    def add_sale(self, rid: str, sale: dict[str, Any]) -> None:
        self.state["confirmed"][rid] = sale
        self.pending += sale["quantity"]
        if self.release_due is None or sale["release_at"] < self.release_due:
            self.release_due = sale["release_at"]
        supplier = sale["supplier_id"] or ""
        if supplier not in self.first_sale or sale["confirmed_at"] < self.first_sale[supplier]:
            self.first_sale[supplier] = sale["confirmed_at"]


def _emit(book: Book, supplier: SupplierView, out: ReservationOutputs, *,
          kind: str, outcome: str, command_id: str | None, reservation: str | None,
          quantity: int, expires_at: int | None = None, supplier_id: str | None = None,
          replayed: bool = False, reason: str | None = None,
          available_override: int | None = None) -> dict[str, Any]:
    state = book.state
    state["sequence"] += 1
    decision = {
        "command_id": command_id, "platform_sku": state["platform_sku"],
        "reservation_id": reservation, "kind": kind, "outcome": outcome,
        "quantity": quantity,
        "available": book.available(supplier) if available_override is None
        else available_override,
        "supplier_total": supplier.total, "held": book.held,
        "confirmed_pending": book.pending, "expires_at": expires_at,
        "supplier_id": supplier_id, "replayed": replayed, "sequence": state["sequence"],
        "decided_at": state["clock"], "reason": reason,
    }
    out.decisions.append(decision)
    return decision


def decide(state: dict[str, Any] | None, platform_sku: str,
           commands: Iterable[tuple[dict[str, Any], int]], supplier: SupplierView,
           rules: ReservationRules, out: ReservationOutputs) -> dict[str, Any]:
    """Decide the commands of one platform SKU in log order; return the SKU's new state.

    `commands` are (ReservationCommand, the record's time in epoch ms). A TICK only moves the
    clock. The input state is never mutated. (The agent keeps a `Book` per SKU for a whole
    batch instead, so that the state is copied once per batch, not per command.)
    """
    book = Book(state, platform_sku)
    for command, at_ms in commands:
        book.apply(command, at_ms, supplier, rules, out)
    return book.state


def _hold(book: Book, command: dict[str, Any], supplier: SupplierView,
          rules: ReservationRules, out: ReservationOutputs) -> None:
    state = book.state
    key = command.get("idempotency_key")
    rid = command.get("reservation_id")
    quantity = int(command.get("quantity") or 0)
    answer = state["answers"].get(key) if key else None
    if answer is not None:
        _emit(book, supplier, out, kind=HOLD, outcome=answer["outcome"],
              command_id=command["command_id"], reservation=answer["reservation_id"],
              quantity=answer["quantity"], expires_at=answer["expires_at"], replayed=True,
              available_override=answer["available"])
        return
    if not rid or not 1 <= quantity <= MAX_QUANTITY or command.get("ttl_ms", 0) < 0:
        _emit(book, supplier, out, kind=HOLD, outcome=INVALID,
              command_id=command["command_id"], reservation=rid, quantity=quantity,
              reason="a hold needs a reservation id, a quantity of 1 to 1,000,000 and a TTL >= 0")
        return
    if rid in state["holds"] or rid in state["closed"]:
        # The same request without its answer (forgotten or never recorded): never a second hold.
        hold = state["holds"].get(rid)
        _emit(book, supplier, out, kind=HOLD, outcome=GRANTED if hold else
              state["closed"][rid]["outcome"], command_id=command["command_id"],
              reservation=rid, quantity=hold["quantity"] if hold else quantity,
              expires_at=hold["expires_at"] if hold else None, replayed=True)
        return
    ttl = int(command.get("ttl_ms") or 0) or rules.default_ttl_ms
    ttl = min(ttl, rules.max_ttl_ms)
    now = state["clock"]
    if quantity <= book.available(supplier):
        expires_at = now + ttl
        book.add_hold(rid, quantity, expires_at, now)
        decision = _emit(book, supplier, out, kind=HOLD, outcome=GRANTED,
                         command_id=command["command_id"], reservation=rid, quantity=quantity,
                         expires_at=expires_at)
    else:
        decision = _emit(book, supplier, out, kind=HOLD, outcome=SOLD_OUT,
                         command_id=command["command_id"], reservation=None,
                         quantity=quantity)
    if key:
        state["answers"][key] = {
            "reservation_id": decision["reservation_id"], "outcome": decision["outcome"],
            "quantity": quantity, "available": decision["available"],
            "expires_at": decision["expires_at"], "at": now}


def _confirm(book: Book, command: dict[str, Any], supplier: SupplierView,
             rules: ReservationRules, out: ReservationOutputs) -> None:
    state = book.state
    rid = command.get("reservation_id") or ""
    hold = book.end_hold(rid)
    if hold is None:
        ended = state["closed"].get(rid)
        outcome = ended["outcome"] if ended else NOT_FOUND
        _emit(book, supplier, out, kind=CONFIRM, outcome=outcome,
              command_id=command["command_id"], reservation=rid or None, quantity=0,
              supplier_id=ended["supplier_id"] if ended else None, replayed=ended is not None)
        return
    now = state["clock"]
    book.add_sale(rid, {"quantity": hold["quantity"], "supplier_id": supplier.best_supplier,
                        "confirmed_at": now, "release_at": now + rules.reflect_bound_ms})
    state["closed"][rid] = {"outcome": CONFIRMED, "supplier_id": supplier.best_supplier,
                            "at": now}
    _emit(book, supplier, out, kind=CONFIRM, outcome=CONFIRMED,
          command_id=command["command_id"], reservation=rid, quantity=hold["quantity"],
          supplier_id=supplier.best_supplier)
    out.orders.append({"order_id": rid, "platform_sku": state["platform_sku"],
                       "supplier_id": supplier.best_supplier, "sku": supplier.best_sku,
                       "quantity": hold["quantity"], "confirmed_at": now,
                       "command_id": command["command_id"]})


def _release(book: Book, command: dict[str, Any], supplier: SupplierView,
             out: ReservationOutputs) -> None:
    state = book.state
    rid = command.get("reservation_id") or ""
    hold = book.end_hold(rid)
    if hold is None:
        ended = state["closed"].get(rid)
        if ended is None:
            outcome = NOT_FOUND
        elif ended["outcome"] == CONFIRMED:
            outcome = ALREADY_CONFIRMED
        else:
            outcome = ended["outcome"]  # RELEASED again, or EXPIRED
        _emit(book, supplier, out, kind=RELEASE, outcome=outcome,
              command_id=command["command_id"], reservation=rid or None, quantity=0,
              replayed=ended is not None)
        return
    state["closed"][rid] = {"outcome": RELEASED, "supplier_id": None, "at": state["clock"]}
    _emit(book, supplier, out, kind=RELEASE, outcome=RELEASED,
          command_id=command["command_id"], reservation=rid, quantity=hold["quantity"])


# Decisions that change the units held or confirmed: each is also an InventoryChange.
_CHANGES_UNITS = frozenset({GRANTED, CONFIRMED, RELEASED, EXPIRED, REFLECTED})


def reservation_change(decision: dict[str, Any], availability: dict[str, Any] | None,
                       now_ms: int) -> dict[str, Any] | None:
    """The InventoryChange (cause RESERVATION) of a decision that changed the units held or
    confirmed, or None (a refusal, a replayed answer, an unknown reservation).

    The supplier fields repeat the SKU's best supplier entry as it stands (the same version,
    quantity_before = quantity_after), so a consumer that applies supplier entries by version
    leaves them as they are; with no supplier entry at all they are empty (supplier_id "",
    version 0). The reservation fields carry available-to-promise after the decision.
    """
    if decision["replayed"] or decision["outcome"] not in _CHANGES_UNITS:
        return None
    supplier_id, entry = "", None
    if availability is not None:
        suppliers = availability["suppliers"]
        best = availability.get("best_supplier")
        if best is None or best not in suppliers:
            best = min(suppliers) if suppliers else None
        if best is not None:
            supplier_id, entry = best, suppliers[best]
    quantity = int(entry["quantity"]) if entry is not None else 0
    at = decision["decided_at"]
    return {
        "platform_sku": decision["platform_sku"], "supplier_id": supplier_id,
        "sku": entry["sku"] if entry is not None else "",
        "quantity_before": quantity, "quantity_after": quantity,
        "version": int(entry["version"]) if entry is not None else 0,
        "total_available": decision["supplier_total"],
        "best_supplier": availability.get("best_supplier") if availability is not None else None,
        "status": entry["status"] if entry is not None else "ACTIVE",
        "cause": "RESERVATION",
        "event_id": f"{decision['platform_sku']}:reservation:{decision['sequence']}",
        "observed_at": at, "produced_at": at, "changed_at": now_ms,
        "lead_time_days": entry.get("lead_time_days") if entry is not None else None,
        "available_to_promise": decision["available"], "held": decision["held"],
        "confirmed_pending": decision["confirmed_pending"],
        "reservation_sequence": decision["sequence"],
        "reservation_id": decision["reservation_id"],
        "reservation_outcome": decision["outcome"],
    }
