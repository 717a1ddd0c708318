"""verify's streaming comparison: stores streamed past the folded log, key by key, no broker."""

from __future__ import annotations

import itertools
import random
from typing import Any

from connectors.cassandra.read import MAX_TOKEN, MIN_TOKEN, summarize, token_ranges
from connectors.logtools import compare as cmp
from connectors.logtools.fold import LogFold, cassandra_row
from connectors.logtools.verification import (
    VerifyFold,
    compare_cassandra_scan,
    compare_changelog,
    compare_redis_scan,
)
from schemas.codec import codec_for

NOW = 1_790_000_000_000


def delta(supplier: str, sku: str, seq: int, quantity: int, **extra: Any) -> bytes:
    return codec_for("SupplierDelta").encode({
        "supplier_id": supplier, "sku": sku, "event_id": f"{supplier}-{sku}-{seq}",
        "sequence": seq, "kind": "SNAPSHOT", "quantity": quantity, "observed_at": NOW - 1000,
        "price": "9.50", "currency": "EUR", "warehouse": None, "lead_time_days": 2,
        "status": "ACTIVE", "connector": "test", "received_at": NOW - 500, **extra})


def folded(n_skus: int = 5, suppliers: tuple[str, ...] = ("s1", "s2")) -> VerifyFold:
    fold = VerifyFold()
    for i in range(n_skus):
        for j, s in enumerate(suppliers):
            fold.apply(f"{s}|k{i}".encode(), delta(s, f"k{i}", 1, 10 * i + j + 1), NOW)
    return fold


def cassandra_partition(fold: VerifyFold, sku: str) -> dict[str, Any]:
    """The partition a correct Cassandra holds for a SKU (cassandra_read.summarize shape)."""
    rows = [{"platform_sku": sku, "supplier_id": s, **e.cassandra_row()}
            for s, e in fold.expected(sku).items()]
    return summarize(sku, rows)


def cache_hash(fold: VerifyFold, sku: str) -> dict[str, Any]:
    """What RedisCache.get returns for a correct, complete hash."""
    from pipeline.aggregate import best_supplier, total_available

    suppliers = {s: {**e.cache_entry(), "updated_at": 0} for s, e in fold.expected(sku).items()}
    total = total_available(suppliers)
    return {"platform_sku": sku, "total": total, "complete": True, "suppliers": suppliers,
            "best_supplier": best_supplier(suppliers) if total else None, "updated_at": 0}


def test_verify_fold_keeps_what_logfold_expects_in_compact_entries() -> None:
    rng = random.Random(3)
    records = []
    for n in range(400):
        s, k = rng.choice(("s1", "s2", "s3")), f"k{rng.randrange(30)}"
        extra = {"kind": rng.choice(("SNAPSHOT", "ADJUSTMENT")),
                 "status": rng.choice(("ACTIVE", "ACTIVE", "DISCONTINUED")),
                 "lead_time_days": rng.choice((None, 1, 4))}
        records.append((f"{s}|{k}".encode(), delta(s, k, n // 10 + 1, rng.randrange(-3, 40),
                                                   **extra)))
    full, compact = LogFold(), VerifyFold()
    for key, value in records:
        full.apply(key, value, NOW)
        compact.apply(key, value, NOW)
    assert compact.rows == {} and compact.changes == {}
    assert compact.stock == full.stock and compact.availability == full.availability
    for sku in full.availability:
        assert {s: e.cassandra_row() for s, e in compact.expected(sku).items()} == {
            s: {f: r[f] for f in cmp.CASSANDRA_FIELDS}
            for s, r in full.expected_rows(sku).items()}
        by_supplier = {s: c for (p, s), c in full.changes.items() if p == sku}
        assert {s: e.cache_entry() for s, e in compact.expected(sku).items()} == \
            cmp.expected_cache_entries(by_supplier)
    assert {k: cassandra_row(u) for k, u in full.rows.items()}  # the fold did write rows


def test_cassandra_scan_finds_missing_unexpected_and_changed_rows() -> None:
    fold = folded(5)
    partitions = [cassandra_partition(fold, f"k{i}") for i in (0, 1, 3, 4)]  # k2 is gone
    del partitions[1]["suppliers"]["s2"]  # one row of k1 deleted
    partitions[2]["suppliers"]["s1"]["quantity"] = 999  # k3/s1 changed in place
    partitions.append(summarize("zz", [{"platform_sku": "zz", "supplier_id": "s9",
                                        **fold.expected("k0")["s1"].cassandra_row()}]))
    result = cmp.Comparison()
    compare_cassandra_scan(fold, result, partitions)
    found = {(d.key, d.entry, d.kind) for d in result.drift()}
    assert found == {("k1", "s2", cmp.MISSING), ("k2", "s1", cmp.MISSING),
                     ("k2", "s2", cmp.MISSING), ("k3", "s1", cmp.MISMATCH),
                     ("zz", "s9", cmp.UNEXPECTED)}
    (changed,) = [d for d in result.drift() if d.kind == cmp.MISMATCH]
    assert changed.as_json() == {"store": "cassandra", "key": "k3", "entry": "s1",
                                 "kind": "mismatch", "expected": {"quantity": 31},
                                 "found": {"quantity": 999}}
    assert result.checked["cassandra"] == 6  # five SKUs of the log and one it never had
    assert result.drift_count("cassandra") == 5


def test_redis_scan_counts_a_key_returned_twice_once_and_reads_what_scan_missed() -> None:
    fold = folded(4)
    good = {f"k{i}": cache_hash(fold, f"k{i}") for i in range(4)}
    bad = {**good["k1"], "suppliers": {**good["k1"]["suppliers"]}}
    bad["suppliers"]["s1"] = {**bad["suppliers"]["s1"], "quantity": 77}
    scanned: list[list[tuple[str, dict[str, Any] | None]]] = [
        [("k0", good["k0"]), ("k1", bad)], [("k1", bad), ("junk", good["k0"])]]
    # k2 was written after SCAN passed it; k3 has no hash (a cache miss).
    later = {"k2": good["k2"], "k3": None}
    reads: list[list[str]] = []

    def read(skus: Any) -> list[list[tuple[str, dict[str, Any] | None]]]:
        wanted = sorted(skus)
        reads.append(wanted)
        return [[(s, later[s]) for s in wanted]]

    result = cmp.Comparison()
    compare_redis_scan(fold, result, scanned, read)
    assert reads == [["k2", "k3"]]
    assert result.checked["redis"] == 5  # k0..k3 and junk, k1 once
    drift = sorted((d.key, d.entry, d.kind) for d in result.drift())
    assert ("k1", "s1", cmp.MISMATCH) in drift
    assert {k for k, _e, _kind in drift} == {"k1", "junk"}
    assert result.count(cmp.ABSENT) == 1  # k3: a miss, not drift

    strict = cmp.Comparison()
    compare_redis_scan(fold, strict, scanned, read, require_cache=True)
    assert ("k3", "", cmp.MISSING) in {(d.key, d.entry, d.kind) for d in strict.drift()}


def test_changelog_compare_takes_each_key_s_last_record() -> None:
    fold = folded(3)
    codec = codec_for("Availability")

    def rec(sku: str, **change: Any) -> tuple[bytes, bytes]:
        return sku.encode(), codec.encode({**fold.availability[sku], **change})

    records: list[tuple[bytes, bytes | None]] = [
        rec("k0", total=1),  # wrong, then corrected by its next record
        rec("k1"), rec("k0"),
        rec("k2"), (b"k2", None),  # deleted: missing
        (b"zz", codec.encode({**fold.availability["k1"], "platform_sku": "zz"})),
        (b"yy", codec.encode({**fold.availability["k1"], "platform_sku": "yy"})),
        (b"yy", None),  # written, then deleted: not there
    ]
    result = cmp.Comparison()
    compare_changelog("table:availability", result, records,
                      expected=lambda k: fold.availability.get(k.decode()),
                      expected_keys=[s.encode() for s in fold.availability],
                      decode=codec.decode, compare=cmp.compare_availability_entry)
    assert sorted((d.key, d.entry, d.kind) for d in result.drift()) == [
        ("k2", "s1", cmp.MISSING), ("k2", "s2", cmp.MISSING),
        ("zz", "s1", cmp.UNEXPECTED), ("zz", "s2", cmp.UNEXPECTED)]
    assert result.checked["table:availability"] == 4  # k0, k1, k2 and zz

    only = cmp.Comparison()
    compare_changelog("table:availability", only, records,
                      expected=lambda k: fold.availability.get(k.decode()),
                      expected_keys=[b"k0"], decode=codec.decode,
                      compare=cmp.compare_availability_entry, only={"k0"})
    assert only.drift() == [] and only.checked["table:availability"] == 1


def test_comparison_counts_everything_but_lists_at_most_keep() -> None:
    result = cmp.Comparison(keep=3)
    for i in range(10):
        result.add("redis", f"k{i}", [cmp.Difference("redis", f"k{i}", "s1", cmp.MISSING),
                                      cmp.Difference("redis", f"k{i}", "s2", cmp.AHEAD, 1, 2)])
    assert result.checked["redis"] == 10
    assert result.drift_count() == 10 and result.count(cmp.AHEAD) == 10
    assert len(result.differences) == 3 and result.not_kept == 7


def test_deferred_drift_is_settled_by_the_recheck() -> None:
    result = cmp.Comparison(defer=True)
    result.add("cassandra", "a", [cmp.Difference("cassandra", "a", "s1", cmp.BEHIND, 1, 0)])
    result.add("cassandra", "b", [cmp.Difference("cassandra", "b", "s1", cmp.AHEAD, 1, 2)])
    result.add("redis", "c", [cmp.Difference("redis", "c", "s1", cmp.MISMATCH, 1, 2)])
    result.add("redis", "d", [])
    assert result.suspects == {"cassandra": {"a"}, "redis": {"c"}}
    assert result.drift_count() == 0 and result.count(cmp.AHEAD) == 1

    again = cmp.Comparison()  # the worker wrote `a` meanwhile; `c` is still wrong
    again.add("cassandra", "a", [])
    again.add("redis", "c", [cmp.Difference("redis", "c", "s1", cmp.MISMATCH, 1, 2)])
    result.settle(again)
    assert result.checked == {"cassandra": 2, "redis": 2}  # each key counted once
    assert [(d.store, d.key) for d in result.drift()] == [("redis", "c")]
    assert result.drift_count() == 1 and result.suspects == {}


def test_token_ranges_cover_the_ring_without_gaps() -> None:
    ranges = token_ranges(16)
    assert ranges[0][0] == MIN_TOKEN and ranges[-1][1] == MAX_TOKEN
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(lo < hi for lo, hi in ranges)
