"""The reservation step as it was before its per-command cost was made flat (frozen here).

`tests/unit/pipeline/test_reservation_book.py` checks that the step of today decides every
command sequence exactly as this one did: a log written by the earlier worker replays to the
same decisions, orders and state. Do not edit: it is the yardstick, not the code.
"""

# ruff: noqa
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# What the change left as it was is shared; the algorithm below is the one it replaced.
from pipeline.reservations import (
    ALREADY_CONFIRMED,
    CONFIRM,
    CONFIRMED,
    EXPIRE,
    EXPIRED,
    GRANTED,
    HOLD,
    INVALID,
    MAX_QUANTITY,
    NOT_FOUND,
    REFLECT,
    REFLECTED,
    RELEASE,
    RELEASED,
    SOLD_OUT,
    ReservationOutputs,
    ReservationRules,
    SupplierView,
    _copy,
    available,
    confirmed_pending,
    empty_state,
    held,
    next_deadline,
)


def _emit(state: dict[str, Any], supplier: SupplierView, out: ReservationOutputs, *,
          kind: str, outcome: str, command_id: str | None, reservation: str | None,
          quantity: int, expires_at: int | None = None, supplier_id: str | None = None,
          replayed: bool = False, reason: str | None = None,
          available_override: int | None = None) -> dict[str, Any]:
    state["sequence"] += 1
    decision = {
        "command_id": command_id, "platform_sku": state["platform_sku"],
        "reservation_id": reservation, "kind": kind, "outcome": outcome,
        "quantity": quantity,
        "available": available(state, supplier) if available_override is None
        else available_override,
        "supplier_total": supplier.total, "held": held(state),
        "confirmed_pending": confirmed_pending(state), "expires_at": expires_at,
        "supplier_id": supplier_id, "replayed": replayed, "sequence": state["sequence"],
        "decided_at": state["clock"], "reason": reason,
    }
    out.decisions.append(decision)
    return decision


def advance(state: dict[str, Any], clock_ms: int, supplier: SupplierView,
            rules: ReservationRules, out: ReservationOutputs) -> dict[str, Any]:
    """Move the SKU's clock to clock_ms (never back): expire holds, release reflected sales,
    forget answers older than the answer TTL. Mutates and returns `state` (a copy)."""
    if clock_ms > state["clock"]:
        state["clock"] = clock_ms
    now = state["clock"]
    for rid, hold in sorted(state["holds"].items(), key=lambda kv: (kv[1]["expires_at"], kv[0])):
        if hold["expires_at"] > now:
            continue
        del state["holds"][rid]
        state["closed"][rid] = {"outcome": EXPIRED, "supplier_id": None, "at": now}
        _emit(state, supplier, out, kind=EXPIRE, outcome=EXPIRED, command_id=None,
              reservation=rid, quantity=hold["quantity"], expires_at=hold["expires_at"])
    for rid, sale in sorted(state["confirmed"].items(),
                            key=lambda kv: (kv[1]["confirmed_at"], kv[0])):
        snapshot_at = supplier.snapshot_at.get(sale["supplier_id"] or "")
        if snapshot_at is not None and snapshot_at > sale["confirmed_at"]:
            reason = "a snapshot observed after the confirm"
        elif sale["release_at"] <= now:
            reason = "the reflection bound passed"
        else:
            continue
        del state["confirmed"][rid]
        _emit(state, supplier, out, kind=REFLECT, outcome=REFLECTED, command_id=None,
              reservation=rid, quantity=sale["quantity"], supplier_id=sale["supplier_id"],
              reason=reason)
    horizon = now - rules.answer_ttl_ms
    for name in ("answers", "closed"):
        entries = state[name]
        stale = [k for k, v in entries.items() if v["at"] <= horizon]
        for k in stale:
            del entries[k]
        if len(entries) > rules.max_answers:  # oldest first, beyond the cap
            for k, _v in sorted(entries.items(), key=lambda kv: kv[1]["at"])[
                    :len(entries) - rules.max_answers]:
                del entries[k]
    return state


def decide(state: dict[str, Any] | None, platform_sku: str,
           commands: Iterable[tuple[dict[str, Any], int]], supplier: SupplierView,
           rules: ReservationRules, out: ReservationOutputs) -> dict[str, Any]:
    """Decide the commands of one platform SKU in log order; return the SKU's new state.

    `commands` are (ReservationCommand, the record's time in epoch ms). A TICK only moves the
    clock. The input state is never mutated.
    """
    state = _copy(state) if state is not None else empty_state(platform_sku)
    for command, at_ms in commands:
        state = advance(state, at_ms, supplier, rules, out)
        kind = command["kind"]
        if kind == HOLD:
            _hold(state, command, supplier, rules, out)
        elif kind == CONFIRM:
            _confirm(state, command, supplier, rules, out)
        elif kind == RELEASE:
            _release(state, command, supplier, out)
    return state


def _hold(state: dict[str, Any], command: dict[str, Any], supplier: SupplierView,
          rules: ReservationRules, out: ReservationOutputs) -> None:
    key = command.get("idempotency_key")
    rid = command.get("reservation_id")
    quantity = int(command.get("quantity") or 0)
    answer = state["answers"].get(key) if key else None
    if answer is not None:
        _emit(state, supplier, out, kind=HOLD, outcome=answer["outcome"],
              command_id=command["command_id"], reservation=answer["reservation_id"],
              quantity=answer["quantity"], expires_at=answer["expires_at"], replayed=True,
              available_override=answer["available"])
        return
    if not rid or not 1 <= quantity <= MAX_QUANTITY or command.get("ttl_ms", 0) < 0:
        _emit(state, supplier, out, kind=HOLD, outcome=INVALID,
              command_id=command["command_id"], reservation=rid, quantity=quantity,
              reason="a hold needs a reservation id, a quantity of 1 to 1,000,000 and a TTL >= 0")
        return
    if rid in state["holds"] or rid in state["closed"]:
        # The same request without its answer (forgotten or never recorded): never a second hold.
        hold = state["holds"].get(rid)
        _emit(state, supplier, out, kind=HOLD, outcome=GRANTED if hold else
              state["closed"][rid]["outcome"], command_id=command["command_id"],
              reservation=rid, quantity=hold["quantity"] if hold else quantity,
              expires_at=hold["expires_at"] if hold else None, replayed=True)
        return
    ttl = int(command.get("ttl_ms") or 0) or rules.default_ttl_ms
    ttl = min(ttl, rules.max_ttl_ms)
    now = state["clock"]
    if quantity <= available(state, supplier):
        expires_at = now + ttl
        state["holds"][rid] = {"quantity": quantity, "expires_at": expires_at, "created_at": now}
        decision = _emit(state, supplier, out, kind=HOLD, outcome=GRANTED,
                         command_id=command["command_id"], reservation=rid, quantity=quantity,
                         expires_at=expires_at)
    else:
        decision = _emit(state, supplier, out, kind=HOLD, outcome=SOLD_OUT,
                         command_id=command["command_id"], reservation=None,
                         quantity=quantity)
    if key:
        state["answers"][key] = {
            "reservation_id": decision["reservation_id"], "outcome": decision["outcome"],
            "quantity": quantity, "available": decision["available"],
            "expires_at": decision["expires_at"], "at": now}


def _ended(state: dict[str, Any], rid: str) -> dict[str, Any] | None:
    return state["closed"].get(rid)


def _confirm(state: dict[str, Any], command: dict[str, Any], supplier: SupplierView,
             rules: ReservationRules, out: ReservationOutputs) -> None:
    rid = command.get("reservation_id") or ""
    hold = state["holds"].get(rid)
    if hold is None:
        ended = _ended(state, rid)
        outcome = ended["outcome"] if ended else NOT_FOUND
        _emit(state, supplier, out, kind=CONFIRM, outcome=outcome,
              command_id=command["command_id"], reservation=rid or None, quantity=0,
              supplier_id=ended["supplier_id"] if ended else None, replayed=ended is not None)
        return
    now = state["clock"]
    del state["holds"][rid]
    sale = {"quantity": hold["quantity"], "supplier_id": supplier.best_supplier,
            "confirmed_at": now, "release_at": now + rules.reflect_bound_ms}
    state["confirmed"][rid] = sale
    state["closed"][rid] = {"outcome": CONFIRMED, "supplier_id": supplier.best_supplier,
                            "at": now}
    _emit(state, supplier, out, kind=CONFIRM, outcome=CONFIRMED,
          command_id=command["command_id"], reservation=rid, quantity=hold["quantity"],
          supplier_id=supplier.best_supplier)
    out.orders.append({"order_id": rid, "platform_sku": state["platform_sku"],
                       "supplier_id": supplier.best_supplier, "sku": supplier.best_sku,
                       "quantity": hold["quantity"], "confirmed_at": now,
                       "command_id": command["command_id"]})


def _release(state: dict[str, Any], command: dict[str, Any], supplier: SupplierView,
             out: ReservationOutputs) -> None:
    rid = command.get("reservation_id") or ""
    hold = state["holds"].pop(rid, None)
    if hold is None:
        ended = _ended(state, rid)
        if ended is None:
            outcome = NOT_FOUND
        elif ended["outcome"] == CONFIRMED:
            outcome = ALREADY_CONFIRMED
        else:
            outcome = ended["outcome"]  # RELEASED again, or EXPIRED
        _emit(state, supplier, out, kind=RELEASE, outcome=outcome,
              command_id=command["command_id"], reservation=rid or None, quantity=0,
              replayed=ended is not None)
        return
    state["closed"][rid] = {"outcome": RELEASED, "supplier_id": None, "at": state["clock"]}
    _emit(state, supplier, out, kind=RELEASE, outcome=RELEASED,
          command_id=command["command_id"], reservation=rid, quantity=hold["quantity"])
