"""Property tests: the worker's pure step (pipeline/step.py) over any arrival order equals the
reference model, including the per-key dedup memory the worker keeps (its newest ids)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.aggregate import fold_update
from pipeline.catalog import Catalog
from pipeline.dedup import RECENT_EVENTS_MAX
from pipeline.step import RawRecord, StepContext, StepOutputs, apply_deltas, fold_updates
from pipeline.validate import delta_key
from schemas.codec import codec_for
from tests.unit.reference_model import reference_run

NOW = 1_760_000_000_000
TTL_MS = 10 * 24 * 3_600_000  # longer than any run: the reference model never forgets
SPARSE_BASE = 1_760_000_000_000_000  # a source timestamp in microseconds

SUPPLIERS = ("s1", "s2", "s3")
SKUS = ("A", "B")
KEYS = tuple((s, k) for s in SUPPLIERS for k in SKUS)
# Several suppliers per platform SKU, some SKUs unmapped (identity).
CATALOG = Catalog({("s1", "A"): "P1", ("s2", "A"): "P1", ("s2", "B"): "P2", ("s3", "B"): "P2"})

# Weights of the arrival operations: mostly new events, plenty of trouble.
OPS = ("new",) * 6 + ("redeliver",) * 2 + ("reissue", "stale_snapshot", "swap", "swap")

Delta = dict[str, Any]


def _delta(
    key: tuple[str, str],
    event_id: str,
    sequence: int,
    kind: str,
    quantity: int,
    status: str,
    lead_time_days: int | None,
) -> Delta:
    return {
        "supplier_id": key[0],
        "sku": key[1],
        "event_id": event_id,
        "sequence": sequence,
        "kind": kind,
        "quantity": quantity,
        "observed_at": NOW - 10_000,
        "price": None,
        "currency": None,
        "warehouse": None,
        "lead_time_days": lead_time_days,
        "status": status,
        "connector": "test",
        "received_at": NOW - 5_000,
    }


@st.composite
def arrivals(draw: st.DrawFn, *, max_ops: int = 40) -> list[Delta]:
    """An arrival order of deltas with duplicates, re-issued ids, stale snapshots, reordering."""
    sparse = {key: draw(st.booleans()) for key in KEYS}
    last_seq = {key: SPARSE_BASE if sparse[key] else 0 for key in KEYS}
    originals: list[Delta] = []
    out: list[Delta] = []

    def next_sequence(key: tuple[str, str]) -> int:
        if sparse[key]:
            step = draw(st.integers(1, 5_000_000))
        else:
            step = draw(st.sampled_from((1, 1, 1, 1, 2, 3)))  # 2 and 3 are gaps
        last_seq[key] += step
        return last_seq[key]

    for n in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(OPS))
        if op == "new" or not originals:
            key = draw(st.sampled_from(KEYS))
            kind = draw(st.sampled_from(("SNAPSHOT", "ADJUSTMENT", "ADJUSTMENT")))
            quantity = draw(st.integers(0, 8) if kind == "SNAPSHOT" else st.integers(-6, 6))
            status = draw(st.sampled_from(("ACTIVE",) * 4 + ("DISCONTINUED",)))
            lead = draw(st.sampled_from((None, 1, 5)))
            d = _delta(key, f"e{n}", next_sequence(key), kind, quantity, status, lead)
            originals.append(d)
            out.append(d)
        elif op == "redeliver":  # the same record again (connector retry, consumer replay)
            out.append(dict(draw(st.sampled_from(out))))
        elif op == "reissue":  # the same event_id under a fresh sequence
            d = dict(draw(st.sampled_from(originals)))
            d["sequence"] = next_sequence((d["supplier_id"], d["sku"]))
            out.append(d)
        elif op == "stale_snapshot":  # a late snapshot carrying an old sequence
            key = draw(st.sampled_from(KEYS))
            low = SPARSE_BASE if sparse[key] else 1
            sequence = draw(st.integers(low, max(low, last_seq[key])))
            d = _delta(key, f"e{n}", sequence, "SNAPSHOT", draw(st.integers(0, 8)), "ACTIVE", 1)
            originals.append(d)
            out.append(d)
        elif op == "swap" and len(out) >= 2:  # arrive before an earlier event
            back = draw(st.integers(1, min(4, len(out) - 1)))
            out.insert(len(out) - 1 - back, out.pop())
    return out


@dataclass
class PipelineRun:
    """What driving the worker's step over an arrival order produced."""

    states: dict[tuple[str, str], Delta] = field(default_factory=dict)
    availability: dict[str, Delta] = field(default_factory=dict)
    updates: list[Delta] = field(default_factory=list)
    changes: list[Delta] = field(default_factory=list)
    accepted: list[tuple[str, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    min_quantity: int = 0


CTX = StepContext(platform_sku=CATALOG.platform_sku, dedup_ttl_ms=TTL_MS,
                  wall_clock_ms=lambda: NOW)
CODEC = codec_for("SupplierDelta")


def run_pipeline(
    deltas: list[Delta], run: PipelineRun | None = None, *, t0: int = NOW
) -> PipelineRun:
    """What the agents do, minus Kafka: the step per record as it arrives, then the fold."""
    run = run or PipelineRun()
    for i, raw in enumerate(deltas):
        now = t0 + i
        key = (raw["supplier_id"], raw["sku"])
        record = RawRecord(delta_key(*key), CODEC.encode(raw), now, "inventory.deltas", 0, i)
        out = StepOutputs(trail=[])
        state = apply_deltas(run.states.get(key), [record], CTX, out)
        assert not out.dead_letters, out.dead_letters
        (_offset, outcome, update), = out.trail
        run.counts[outcome] += 1
        run.counts["gap"] += out.dense_gaps
        run.counts["clamped"] += sum(out.clamped.values())
        run.counts["resync"] += len(out.resyncs)
        if outcome in ("applied", "noop"):
            run.accepted.append((raw["supplier_id"], raw["event_id"]))
        if state is not None:
            run.states[key] = state
            run.min_quantity = min(run.min_quantity, state["quantity"])
        if update is not None:
            run.updates.append(update)
            run.min_quantity = min(run.min_quantity, update["quantity_after"])
            platform_sku = update["platform_sku"]
            avail = fold_updates(run.availability.get(platform_sku), [update], now, out)
            assert avail is not None
            run.availability[platform_sku] = avail
            run.changes.extend(out.changes)
    return run


def _project(record: Delta, fields: tuple[str, ...]) -> Delta:
    return {f: record[f] for f in fields}


CHANGE_FIELDS = (
    "platform_sku",
    "supplier_id",
    "sku",
    "version",
    "quantity_before",
    "quantity_after",
    "status",
    "cause",
    "event_id",
    "total_available",
    "best_supplier",
)


STATE_FIELDS = ("quantity", "version", "status", "suspect", "lead_time_days")


@settings(max_examples=200, deadline=None)
@given(arrivals())
def test_pipeline_equals_reference_model(deltas: list[Delta]) -> None:
    run = run_pipeline(deltas)
    ref = reference_run(deltas, platform_sku_of=CATALOG.platform_sku, dedup_per_key=True,
                        dedup_limit=RECENT_EVENTS_MAX)

    states = {
        k: _project(s, STATE_FIELDS) for k, s in run.states.items()
    }
    assert states == ref.states
    for key, s in run.states.items():
        assert s["platform_sku"] == CATALOG.platform_sku(*key)

    assert run.min_quantity >= 0  # never negative, stored or published
    assert run.accepted == ref.accepted  # the same events accepted, in the same order
    for outcome in ("applied", "noop", "duplicate", "stale", "gap", "clamped", "resync"):
        assert run.counts[outcome] == ref.counts[outcome], outcome

    availability = {
        p: {
            "total": a["total"],
            "best_supplier": a["best_supplier"],
            "suppliers": {
                s: _project(e, ("sku", "quantity", "status", "lead_time_days"))
                for s, e in a["suppliers"].items()
            },
        }
        for p, a in run.availability.items()
    }
    assert availability == ref.availability
    # One InventoryChange per effective change, in order, with the same totals.
    assert [_project(c, CHANGE_FIELDS) for c in run.changes] == ref.changes
    assert len(run.changes) == len(run.updates) == ref.counts["applied"]


@settings(max_examples=200, deadline=None)
@given(arrivals())
def test_reference_totals_match_its_own_states(deltas: list[Delta]) -> None:
    """Cross-check of the reference: availability recomputed from the final states."""
    ref = reference_run(deltas, platform_sku_of=CATALOG.platform_sku)
    totals: Counter[str] = Counter()
    for (supplier_id, sku), s in ref.states.items():
        if s["status"] == "ACTIVE":
            totals[CATALOG.platform_sku(supplier_id, sku)] += s["quantity"]
    for platform_sku in set(totals) | set(ref.availability):
        assert ref.availability.get(platform_sku, {"total": 0})["total"] == totals[platform_sku]


@settings(max_examples=100, deadline=None)
@given(arrivals())
def test_replaying_the_whole_log_changes_nothing(deltas: list[Delta]) -> None:
    run = run_pipeline(deltas)
    states_before = {k: dict(s) for k, s in run.states.items()}
    availability_before = dict(run.availability)
    n_updates, n_changes = len(run.updates), len(run.changes)

    run_pipeline(deltas, run, t0=NOW + 1_000)

    assert len(run.updates) == n_updates and len(run.changes) == n_changes
    assert run.states == states_before
    assert run.availability == availability_before
    # And a replay of the updates into the availability table is ignored too.
    for update in run.updates:
        avail = run.availability[update["platform_sku"]]
        assert fold_update(avail, update, now_ms=NOW + 2_000) == (avail, None)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 30), st.integers(0, 50)), min_size=1, max_size=25),
    st.randoms(use_true_random=False),
)
def test_snapshots_in_any_order_end_at_the_newest(
    snapshots: list[tuple[int, int]], rnd: Any
) -> None:
    """Independent of the reference: the newest snapshot wins whatever the arrival order."""
    deltas = [
        _delta(("s1", "A"), f"e{i}", seq, "SNAPSHOT", qty, "ACTIVE", None)
        for i, (seq, qty) in enumerate(snapshots)
    ]
    arrival = deltas + [dict(d) for d in deltas[: len(deltas) // 2]]
    rnd.shuffle(arrival)
    run = run_pipeline(arrival)
    newest = max(seq for seq, _ in snapshots)
    first_arrived = next(d for d in arrival if d["sequence"] == newest)
    assert run.states[("s1", "A")]["version"] == newest
    assert run.states[("s1", "A")]["quantity"] == first_arrived["quantity"]
    assert not run.states[("s1", "A")]["suspect"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_in_order_dense_stream_is_last_snapshot_plus_later_adjustments(data: st.DataObject) -> None:
    """Independent of the reference: with no trouble, quantity is plain arithmetic."""
    deltas: list[Delta] = []
    running = 0
    base = 0  # last snapshot quantity (0 before any)
    adjustments_after: list[int] = []
    for sequence in range(1, data.draw(st.integers(2, 30)) + 1):
        if sequence == 1 or data.draw(st.booleans()):
            qty = data.draw(st.integers(0, 40))
            kind, running, base, adjustments_after = "SNAPSHOT", qty, qty, []
        else:
            qty = data.draw(st.integers(-running, 40))  # never below zero: nothing clamps
            kind, running = "ADJUSTMENT", running + qty
            adjustments_after.append(qty)
        deltas.append(_delta(("s2", "B"), f"e{sequence}", sequence, kind, qty, "ACTIVE", None))
    run = run_pipeline(deltas)
    state = run.states[("s2", "B")]
    assert state["quantity"] == base + sum(adjustments_after)
    assert state["version"] == len(deltas)
    assert not state["suspect"]
    assert run.counts["gap"] == run.counts["clamped"] == run.counts["stale"] == 0
    assert run.availability.get("P2", {"total": 0})["total"] == state["quantity"]


def test_reference_model_on_a_worked_example() -> None:
    """The reference itself, against numbers worked out by hand."""
    a, b = ("s1", "A"), ("s2", "A")
    deltas = [
        _delta(a, "e1", 1, "SNAPSHOT", 10, "ACTIVE", 2),  # a: 10
        _delta(a, "e2", 2, "ADJUSTMENT", -3, "ACTIVE", 2),  # a: 7
        _delta(a, "e2", 2, "ADJUSTMENT", -3, "ACTIVE", 2),  # duplicate
        _delta(a, "e0", 1, "SNAPSHOT", 50, "ACTIVE", 2),  # stale
        _delta(a, "e4", 4, "ADJUSTMENT", -9, "ACTIVE", 2),  # gap (3 missing), clamp: 0, suspect
        _delta(b, "e1", 7, "ADJUSTMENT", 4, "ACTIVE", 9),  # no state: 4, suspect, resync
        _delta(b, "e8", 8, "SNAPSHOT", 6, "DISCONTINUED", 9),  # publishes 0, clears suspect
        _delta(a, "e9", 9, "SNAPSHOT", 0, "ACTIVE", 2),  # 0 -> 0: no-op, clears suspect
    ]
    ref = reference_run(deltas, platform_sku_of=CATALOG.platform_sku)
    assert ref.states == {
        a: {"quantity": 0, "version": 9, "status": "ACTIVE", "suspect": False,
            "lead_time_days": 2},
        b: {"quantity": 6, "version": 8, "status": "DISCONTINUED", "suspect": False,
            "lead_time_days": 9},
    }
    assert ref.counts == Counter(
        applied=5, noop=1, duplicate=1, stale=1, gap=1, clamped=1, resync=2
    )
    assert [
        (
            c["supplier_id"],
            c["quantity_before"],
            c["quantity_after"],
            c["cause"],
            c["total_available"],
        )
        for c in ref.changes
    ] == [
        ("s1", 0, 10, "SNAPSHOT", 10),
        ("s1", 10, 7, "ADJUSTMENT", 7),
        ("s1", 7, 0, "ADJUSTMENT", 0),
        ("s2", 0, 4, "ADJUSTMENT", 4),
        ("s2", 4, 0, "DISCONTINUED", 0),
    ]
    assert ref.availability["P1"]["total"] == 0
    assert ref.availability["P1"]["best_supplier"] is None
    # The pipeline agrees on this example too.
    run = run_pipeline(deltas)
    assert {
        k: _project(s, STATE_FIELDS) for k, s in run.states.items()
    } == ref.states


def test_the_dedup_memory_is_per_supplier_sku() -> None:
    # The worker remembers accepted ids per (supplier, sku) (the contract's rule 1): the same
    # id on another SKU of the supplier is not a duplicate there.
    deltas = [
        _delta(("s1", "A"), "same", 1, "SNAPSHOT", 5, "ACTIVE", None),
        _delta(("s1", "B"), "same", 1, "SNAPSHOT", 7, "ACTIVE", None),
        _delta(("s2", "B"), "same", 1, "SNAPSHOT", 9, "ACTIVE", None),
        _delta(("s1", "A"), "same", 2, "SNAPSHOT", 6, "ACTIVE", None),  # a duplicate on s1|A
    ]
    per_key = reference_run(deltas, dedup_per_key=True)
    assert set(per_key.states) == {("s1", "A"), ("s1", "B"), ("s2", "B")}
    run = run_pipeline(deltas)
    assert set(run.states) == set(per_key.states)
    assert run.counts["duplicate"] == 1 and run.states[("s1", "A")]["quantity"] == 5
