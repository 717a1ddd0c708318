"""The reservation step decides as it did before its per-command cost was made flat.

`reservations_reference.py` is the step as it was (every command copied and scanned the
SKU's whole state). Random command sequences, several suppliers and snapshots, short TTLs, a
small answer cap and answer TTL, decided command by command by the reference and in batches
of random sizes by one `Book` per batch (as the agent does): the decisions, the orders, the
state and the next deadline are the same. A log written by the earlier worker therefore
replays to the same decisions. (What the Book is for, a command's cost independent of the
SKU's state, is measured by `python -m bench.reservation_step`, not by a timed test.)
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import reservations as new
from tests.unit.pipeline import reservations_reference as old

SKU = "P-1"
T0 = 1_700_000_000_000
SUPPLIERS = ("s1", "s2", None)


def rules(module: Any, answer_ttl_ms: int, max_answers: int) -> Any:
    return module.ReservationRules(default_ttl_ms=900, max_ttl_ms=4000, reflect_bound_ms=2500,
                                   answer_ttl_ms=answer_ttl_ms, max_answers=max_answers)


def view(module: Any, total: int, best: str | None, snapshots: dict[str, int | None]) -> Any:
    return module.SupplierView(total=total, best_supplier=best, best_sku="A-1" if best else None,
                               snapshot_at=dict(snapshots))


commands = st.lists(st.tuples(
    st.sampled_from(["HOLD", "HOLD", "HOLD", "CONFIRM", "RELEASE", "TICK", "SNAPSHOT"]),
    st.integers(0, 30),     # quantity, or which reservation / key / supplier
    # ttl_ms of a hold (0: the default) or a snapshot's total; ms since the previous command.
    # Multiples of 50, as the TTLs and the bound: deadlines often fall on a command's time.
    st.integers(0, 50).map(lambda n: n * 50),
    st.integers(0, 14).map(lambda n: n * 50),
    st.booleans(),          # a hold's idempotency key is one used before
), min_size=1, max_size=120)


@settings(max_examples=400, deadline=None)
@given(commands, st.lists(st.integers(1, 12), min_size=1, max_size=40),
       st.integers(0, 40), st.integers(200, 6000), st.integers(0, 12))
def test_a_book_decides_every_sequence_as_the_step_did(
        ops: list[tuple[str, int, int, int, bool]], batch_sizes: list[int], total: int,
        answer_ttl_ms: int, max_answers: int) -> None:
    snapshots: dict[str, int | None] = {"s1": None, "s2": None}
    at = T0
    sequence: list[tuple[dict[str, Any], int, tuple[int, str | None, dict[str, int | None]]]] = []
    rids: list[str] = []
    for n, (kind, arg, extra, gap, reuse) in enumerate(ops):
        at += gap
        if kind == "SNAPSHOT":  # a supplier's snapshot: the view the later commands see
            supplier = ("s1", "s2")[arg % 2]
            snapshots[supplier] = at
            total = extra % 40
            continue
        rid = f"r{n}" if kind == "HOLD" else (rids[arg % len(rids)] if rids else "none")
        if kind == "HOLD":
            rids.append(rid)
        key = (f"k{arg % max(1, n)}" if reuse else f"k{n}") if kind == "HOLD" else None
        command = {"command_id": f"c{n}", "kind": kind, "platform_sku": SKU,
                   "reservation_id": rid, "quantity": arg % 5 + (kind == "HOLD"),
                   "ttl_ms": extra if kind == "HOLD" else 0, "idempotency_key": key,
                   "requested_at": 0}
        best = SUPPLIERS[(n // 7) % 3]
        sequence.append((command, at, (total, best, dict(snapshots))))

    compare(sequence, batch_sizes, answer_ttl_ms, max_answers)


def compare(sequence: list[tuple[dict[str, Any], int, tuple[int, str | None, dict[str, Any]]]],
            batch_sizes: list[int], answer_ttl_ms: int, max_answers: int) -> None:
    """The reference one command at a time against Books over batches of these sizes."""
    if not sequence:
        return
    # The reference: one command at a time, a fresh copy of the state each time.
    old_rules = rules(old, answer_ttl_ms, max_answers)
    old_out = old.ReservationOutputs()
    state: Any = None
    for command, when, (tot, best, snaps) in sequence:
        state = old.decide(state, SKU, [(command, when)], view(old, tot, best, snaps),
                           old_rules, old_out)
        old_deadline = old.next_deadline(state)

    # The Book: batches of random sizes, the state copied once per batch.
    new_rules = rules(new, answer_ttl_ms, max_answers)
    new_out = new.ReservationOutputs()
    state2: Any = None
    i = 0
    sizes = iter(batch_sizes * (len(sequence) // len(batch_sizes) + 1))
    deadlines = []
    while i < len(sequence):
        book = new.Book(state2, SKU)
        for command, when, (tot, best, snaps) in sequence[i:i + next(sizes)]:
            book.apply(command, when, view(new, tot, best, snaps), new_rules, new_out)
            deadlines.append(book.next_deadline() == new.next_deadline(book.state))
            i += 1
        state2 = book.state

    assert new_out.decisions == old_out.decisions
    assert new_out.orders == old_out.orders
    assert state2 == state
    assert list(state2["answers"]) == list(state["answers"])  # the same order too
    assert all(deadlines) and new.next_deadline(state2) == old_deadline


def test_deadlines_that_fall_on_a_command_time_end_there() -> None:
    """An expiry and a reflection bound exactly at a command's time end at that command."""
    def command(n: int, kind: str, rid: str, ttl_ms: int = 0) -> dict[str, Any]:
        return {"command_id": f"c{n}", "kind": kind, "platform_sku": SKU, "reservation_id": rid,
                "quantity": 1, "ttl_ms": ttl_ms, "idempotency_key": f"k{n}", "requested_at": 0}

    seen = (5, "s1", {"s1": None, "s2": None})
    sequence = [(command(0, "HOLD", "a"), T0, seen), (command(1, "HOLD", "b", 300), T0, seen),
                (command(2, "CONFIRM", "a"), T0 + 100, seen),
                (command(3, "TICK", ""), T0 + 300, seen),            # b expires here
                (command(4, "TICK", ""), T0 + 100 + 2500, seen)]     # a's bound passes here
    out = new.ReservationOutputs()
    book = new.Book(None, SKU)
    for cmd, when, (tot, best, snaps) in sequence:
        book.apply(cmd, when, view(new, tot, best, snaps), rules(new, 10_000, 100), out)
    ends = [(d["outcome"], d["reservation_id"], d["decided_at"] - T0) for d in out.decisions
            if d["kind"] in ("EXPIRE", "REFLECT")]
    assert ends == [("EXPIRED", "b", 300), ("REFLECTED", "a", 2600)]
    for sizes in ([1], [2], [5]):
        compare(sequence, sizes, 10_000, 100)
