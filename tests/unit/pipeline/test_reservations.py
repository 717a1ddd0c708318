"""The reservation rule (pipeline/reservations.py) against a model written here, with no broker."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.reservations import (
    ALREADY_CONFIRMED,
    CONFIRMED,
    EXPIRED,
    GRANTED,
    NOT_FOUND,
    REFLECTED,
    RELEASED,
    SOLD_OUT,
    ReservationOutputs,
    ReservationRules,
    SupplierView,
    available,
    decide,
    next_deadline,
    reservation_change,
    reservation_id,
    sku_of_reservation,
)
from schemas.codec import codec_for

SKU = "P-1"
RULES = ReservationRules(default_ttl_ms=1000, max_ttl_ms=5000, reflect_bound_ms=3000,
                         answer_ttl_ms=100_000)
T0 = 1_700_000_000_000


def cmd(kind: str, n: int, *, rid: str | None = None, quantity: int = 0, ttl_ms: int = 0,
        key: str | None = None) -> dict[str, Any]:
    return {"command_id": f"c{n}", "kind": kind, "platform_sku": SKU, "reservation_id": rid,
            "quantity": quantity, "ttl_ms": ttl_ms, "idempotency_key": key, "requested_at": 0}


def supplier(total: int, snapshot_at: int | None = None) -> SupplierView:
    return SupplierView(total=total, best_supplier="s1", best_sku="A-1",
                        snapshot_at={"s1": snapshot_at})


def run(state: Any, command: dict[str, Any], at: int, view: SupplierView
        ) -> tuple[Any, ReservationOutputs]:
    out = ReservationOutputs()
    new = decide(state, SKU, [(command, at)], view, RULES, out)
    for d in out.decisions:  # every decision is a valid record of its schema
        codec_for("ReservationDecision").encode(d)
    codec_for("ReservationState").encode(new)
    return new, out


def test_hold_until_sold_out_then_release_gives_units_back() -> None:
    view = supplier(2)
    state = None
    answers = []
    for i in range(3):
        state, out = run(state, cmd("HOLD", i, rid=f"r{i}", quantity=1), T0 + i, view)
        answers.append(out.decisions[-1])
    assert [a["outcome"] for a in answers] == [GRANTED, GRANTED, SOLD_OUT]
    assert answers[2]["available"] == 0 and answers[2]["reservation_id"] is None
    state, out = run(state, cmd("RELEASE", 9, rid="r0"), T0 + 10, view)
    assert out.decisions[-1]["outcome"] == RELEASED and out.decisions[-1]["available"] == 1
    state, out = run(state, cmd("RELEASE", 10, rid="r0"), T0 + 11, view)
    assert out.decisions[-1]["outcome"] == RELEASED and out.decisions[-1]["replayed"]
    state, out = run(state, cmd("CONFIRM", 11, rid="r0"), T0 + 12, view)
    assert out.decisions[-1]["outcome"] == RELEASED  # a released hold cannot be confirmed


def test_idempotency_key_returns_the_first_answer_and_never_a_second_hold() -> None:
    view = supplier(1)
    state, out = run(None, cmd("HOLD", 1, rid="r1", quantity=1, key="k1"), T0, view)
    first = out.decisions[-1]
    state, out = run(state, cmd("HOLD", 2, rid="r1", quantity=1, key="k1"), T0 + 1, view)
    again = out.decisions[-1]
    assert first["outcome"] == again["outcome"] == GRANTED
    assert again["reservation_id"] == first["reservation_id"] and again["replayed"]
    assert again["command_id"] == "c2" and available(state, view) == 0
    # A SOLD_OUT answer is remembered too, even once units come back.
    state, out = run(state, cmd("HOLD", 3, rid="r2", quantity=1, key="k2"), T0 + 2, view)
    assert out.decisions[-1]["outcome"] == SOLD_OUT
    state, out = run(state, cmd("RELEASE", 4, rid="r1"), T0 + 3, view)
    state, out = run(state, cmd("HOLD", 5, rid="r2", quantity=1, key="k2"), T0 + 4, view)
    assert out.decisions[-1]["outcome"] == SOLD_OUT and out.decisions[-1]["replayed"]


def test_expiry_by_the_log_clock_and_the_errors_after_it() -> None:
    view = supplier(5)
    state, out = run(None, cmd("HOLD", 1, rid="r1", quantity=3, ttl_ms=500), T0, view)
    assert out.decisions[-1]["expires_at"] == T0 + 500 and next_deadline(state) == T0 + 500
    state, out = run(state, cmd("TICK", 2), T0 + 499, view)
    assert out.decisions == [] and available(state, view) == 2
    state, out = run(state, cmd("TICK", 3), T0 + 500, view)
    assert [(d["kind"], d["outcome"], d["available"]) for d in out.decisions] == [
        ("EXPIRE", EXPIRED, 5)]
    state, out = run(state, cmd("CONFIRM", 4, rid="r1"), T0 + 501, view)
    assert out.decisions[-1]["outcome"] == EXPIRED
    state, out = run(state, cmd("RELEASE", 5, rid="r1"), T0 + 502, view)
    assert out.decisions[-1]["outcome"] == EXPIRED
    state, out = run(state, cmd("RELEASE", 6, rid="nope"), T0 + 503, view)
    assert out.decisions[-1]["outcome"] == NOT_FOUND
    # A record with an older time does not move the clock back.
    state, out = run(state, cmd("TICK", 7), T0, view)
    assert state["clock"] == T0 + 503


def test_confirm_counts_until_a_snapshot_after_it_reflects_the_sale() -> None:
    view = supplier(5, snapshot_at=T0 - 1000)
    state, _ = run(None, cmd("HOLD", 1, rid="r1", quantity=2), T0, view)
    state, out = run(state, cmd("CONFIRM", 2, rid="r1"), T0 + 10, view)
    assert out.decisions[-1]["outcome"] == CONFIRMED
    assert out.orders == [{"order_id": "r1", "platform_sku": SKU, "supplier_id": "s1",
                           "sku": "A-1", "quantity": 2, "confirmed_at": T0 + 10,
                           "command_id": "c2"}]
    codec_for("Order").encode(out.orders[0])
    assert available(state, view) == 3
    # A snapshot observed before the confirm does not reflect it.
    state, out = run(state, cmd("TICK", 3), T0 + 20, supplier(5, snapshot_at=T0 + 5))
    assert out.decisions == [] and available(state, supplier(5)) == 3
    # The supplier's snapshot after the sale says 3: the sale is in the total, counted once.
    after = supplier(3, snapshot_at=T0 + 15)
    state, out = run(state, cmd("TICK", 4), T0 + 30, after)
    assert [(d["outcome"], d["available"]) for d in out.decisions] == [(REFLECTED, 3)]
    assert available(state, after) == 3
    state, out = run(state, cmd("CONFIRM", 5, rid="r1"), T0 + 31, after)
    assert out.decisions[-1]["outcome"] == CONFIRMED and out.decisions[-1]["replayed"]
    assert out.orders == []  # never a second order
    state, out = run(state, cmd("RELEASE", 6, rid="r1"), T0 + 32, after)
    assert out.decisions[-1]["outcome"] == ALREADY_CONFIRMED


def test_confirmed_sale_stops_counting_after_the_bound() -> None:
    view = supplier(5)
    state, _ = run(None, cmd("HOLD", 1, rid="r1", quantity=2), T0, view)
    state, _ = run(state, cmd("CONFIRM", 2, rid="r1"), T0, view)
    assert next_deadline(state) == T0 + RULES.reflect_bound_ms
    state, out = run(state, cmd("TICK", 3), T0 + RULES.reflect_bound_ms, view)
    assert [d["outcome"] for d in out.decisions] == [REFLECTED]
    assert available(state, view) == 5


def test_reservation_id_names_its_sku() -> None:
    for sku in ("P-1", "ü/ß|x", "a" * 128):
        rid = reservation_id(sku, "client:key")
        assert sku_of_reservation(rid) == sku
        assert rid == reservation_id(sku, "client:key") != reservation_id(sku, "client:other")
    assert sku_of_reservation("garbage") is None
    assert sku_of_reservation("!!!." + "0" * 24) is None


def test_only_a_change_of_held_or_confirmed_units_is_an_inventory_change() -> None:
    state, out = run(None, cmd("HOLD", 1, rid="r1", quantity=2, key="k1"), T0, supplier(2))
    state, more = run(state, cmd("HOLD", 2, rid="r2", quantity=1, key="k2"), T0 + 1,
                      supplier(2))
    state, again = run(state, cmd("HOLD", 3, rid="r1", quantity=2, key="k1"), T0 + 2,
                       supplier(2))
    granted, sold_out, replayed = out.decisions[0], more.decisions[0], again.decisions[0]
    assert (sold_out["outcome"], replayed["replayed"]) == (SOLD_OUT, True)
    assert reservation_change(sold_out, None, T0) is None
    assert reservation_change(replayed, None, T0) is None
    codec = codec_for("InventoryChange")
    # No supplier entry at all: empty supplier fields, version 0.
    bare = reservation_change(granted, None, T0 + 9)
    assert bare is not None and codec.decode(codec.encode(bare)) == bare
    assert (bare["supplier_id"], bare["sku"], bare["version"], bare["cause"]) == (
        "", "", 0, "RESERVATION")
    # With suppliers: the best one's entry, or the first by id when none is best (total 0).
    entry = {"sku": "A-9", "quantity": 0, "version": 4, "status": "ACTIVE",
             "lead_time_days": None, "updated_at": T0, "snapshot_at": None}
    avail = {"platform_sku": SKU, "total": 0, "best_supplier": None,
             "suppliers": {"s2": {**entry, "version": 5}, "s1": entry}}
    change = reservation_change(granted, avail, T0 + 9)
    assert change is not None
    assert (change["supplier_id"], change["version"], change["quantity_before"],
            change["quantity_after"]) == ("s1", 4, 0, 0)
    assert (change["available_to_promise"], change["held"], change["reservation_sequence"],
            change["reservation_outcome"], change["changed_at"]) == (0, 2, 1, GRANTED, T0 + 9)


# -- the model -------------------------------------------------------------------------------

class Model:
    """Available-to-promise as the issue states it, kept the plainest way."""

    def __init__(self) -> None:
        self.total = 0
        self.snapshot_at: int | None = None
        self.holds: dict[str, tuple[int, int]] = {}  # rid -> (quantity, expires_at)
        self.sales: dict[str, tuple[int, int]] = {}  # rid -> (quantity, confirmed_at)
        self.clock = 0

    def tick(self, at: int) -> None:
        self.clock = max(self.clock, at)
        self.holds = {r: h for r, h in self.holds.items() if h[1] > self.clock}
        self.sales = {r: s for r, s in self.sales.items()
                      if not (self.snapshot_at is not None and self.snapshot_at > s[1])
                      and s[1] + RULES.reflect_bound_ms > self.clock}

    def atp(self) -> int:
        return max(0, self.total - sum(q for q, _ in self.holds.values())
                   - sum(q for q, _ in self.sales.values()))


ops = st.lists(st.one_of(
    st.tuples(st.just("HOLD"), st.integers(1, 4), st.integers(0, 3000)),
    st.tuples(st.just("CONFIRM"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("RELEASE"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("TICK"), st.just(0), st.just(0)),
    st.tuples(st.just("SNAPSHOT"), st.integers(0, 12), st.just(0)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops, st.lists(st.integers(0, 1500), min_size=60, max_size=60), st.integers(0, 10))
def test_available_to_promise_matches_the_model(operations: list[tuple[str, int, int]],
                                                 gaps: list[int], total: int) -> None:
    model = Model()
    model.total = total
    state: Any = None
    at = T0
    granted: list[str] = []
    for n, ((op, arg, ttl), gap) in enumerate(zip(operations, gaps, strict=False)):
        at += gap
        if op == "SNAPSHOT":
            model.total, model.snapshot_at = arg, at
            continue
        view = SupplierView(total=model.total, best_supplier="s1", best_sku="A-1",
                            snapshot_at={"s1": model.snapshot_at})
        model.tick(at)
        if op == "HOLD":
            rid = f"r{n}"
            expect = GRANTED if arg <= model.atp() else SOLD_OUT
            if expect == GRANTED:
                model.holds[rid] = (arg, model.clock + (ttl or RULES.default_ttl_ms))
                granted.append(rid)
            command = cmd("HOLD", n, rid=rid, quantity=arg, ttl_ms=ttl)
        else:
            rid = granted[arg % len(granted)] if granted and op != "TICK" else "none"
            if op == "CONFIRM" and rid in model.holds:
                model.sales[rid] = (model.holds.pop(rid)[0], model.clock)
            elif op == "RELEASE":
                model.holds.pop(rid, None)
            command = cmd(op, n, rid=rid)
        state, out = run(state, command, at, view)
        if op == "HOLD":
            assert out.decisions[-1]["outcome"] == expect
        assert available(state, view) == model.atp()
        if out.decisions:
            assert out.decisions[-1]["available"] == model.atp() or out.decisions[-1]["replayed"]
        # Sequences count every decision, one by one.
        seqs = [d["sequence"] for d in out.decisions]
        assert seqs == list(range(state["sequence"] - len(seqs) + 1, state["sequence"] + 1))
