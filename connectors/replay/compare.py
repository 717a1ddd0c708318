"""What verify and `replay --dry-run` compare: the state folded from the log vs the stores.

Each store is compared entry by entry (one supplier of one platform SKU, or one supplier SKU
for the `stock` table) on the version first:

- `ok`: same version, same values;
- `ahead`: the store holds a newer version than the folded log: written after the log was
  read (the worker keeps running). Not drift;
- `behind` / `missing`: older or absent: drift, unless the worker has not got there yet
  (verify re-checks these after a settle delay against a fold extended to the new log end);
- `mismatch`: same version, other values: drift (a write that did not come from the log);
- `unexpected`: an entry the log never produced: drift.

Processing-time fields (`changed_at`, the cache's `t:`/`updated_at`, the availability table's
`updated_at`) are not compared: the worker stamps them with the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.aggregate import best_supplier, total_available

OK = "ok"
AHEAD = "ahead"
BEHIND = "behind"
MISSING = "missing"
MISMATCH = "mismatch"
UNEXPECTED = "unexpected"
DRIFT_KINDS = frozenset({BEHIND, MISSING, MISMATCH, UNEXPECTED})

CASSANDRA_FIELDS = ("sku", "quantity", "version", "status", "lead_time_days", "price",
                    "currency", "updated_at")
CACHE_FIELDS = ("sku", "quantity", "version", "status")
STOCK_FIELDS = ("quantity", "version", "status", "platform_sku", "suspect", "updated_at",
                "recent_events")
AVAILABILITY_FIELDS = ("sku", "quantity", "version", "status", "lead_time_days")


@dataclass(frozen=True, slots=True)
class Difference:
    """One entry that differs between the folded log and a store."""

    store: str  # cassandra | redis | table:stock | table:availability
    key: str  # platform SKU (or supplier|sku for the stock table)
    entry: str  # supplier id, or a derived field name, or "" for a whole key
    kind: str
    expected: Any = None
    actual: Any = None

    @property
    def is_drift(self) -> bool:
        return self.kind in DRIFT_KINDS

    def describe(self) -> str:
        where = f"{self.store} {self.key!r}" + (f" [{self.entry}]" if self.entry else "")
        return f"{where}: {self.kind}: expected {self.expected!r}, found {self.actual!r}"


@dataclass
class Comparison:
    """Counts per store and the differences found."""

    checked: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    def add(self, store: str, diffs: Iterable[Difference]) -> None:
        self.checked[store] = self.checked.get(store, 0) + 1
        self.differences.extend(diffs)

    def drift(self) -> list[Difference]:
        return [d for d in self.differences if d.is_drift]

    def count(self, kind: str) -> int:
        return sum(1 for d in self.differences if d.kind == kind)


def _pick(entry: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: entry.get(f) for f in fields}


def compare_entries(store: str, key: str, expected: Mapping[str, Mapping[str, Any]],
                    actual: Mapping[str, Mapping[str, Any]],
                    fields: tuple[str, ...]) -> list[Difference]:
    """Compare versioned entries (by supplier or any sub-key) of one key."""
    out: list[Difference] = []
    for entry_id, exp in expected.items():
        act = actual.get(entry_id)
        if act is None:
            out.append(Difference(store, key, entry_id, MISSING, _pick(exp, fields), None))
            continue
        ev, av = int(exp["version"]), int(act["version"])
        if av > ev:
            out.append(Difference(store, key, entry_id, AHEAD, ev, av))
        elif av < ev:
            out.append(Difference(store, key, entry_id, BEHIND, _pick(exp, fields),
                                  _pick(act, fields)))
        else:
            e, a = _pick(exp, fields), _pick(act, fields)
            if e != a:
                changed = {f for f in fields if e[f] != a[f]}
                out.append(Difference(store, key, entry_id, MISMATCH,
                                      {f: e[f] for f in sorted(changed)},
                                      {f: a[f] for f in sorted(changed)}))
    for entry_id, act in actual.items():
        if entry_id not in expected:
            out.append(Difference(store, key, entry_id, UNEXPECTED, None, _pick(act, fields)))
    return out


def compare_cassandra(platform_sku: str, expected_rows: Mapping[str, Mapping[str, Any]],
                      actual: Mapping[str, Any] | None) -> list[Difference]:
    """availability_by_sku rows of one platform SKU (actual as cassandra_read.summarize gives)."""
    suppliers = actual["suppliers"] if actual else {}
    return compare_entries("cassandra", platform_sku, expected_rows, suppliers,
                           CASSANDRA_FIELDS)


def expected_cache_entries(changes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cache entries by supplier from each one's last InventoryChange, as the script stores them."""
    out = {}
    for supplier_id, c in changes.items():
        entry = {"sku": c["sku"], "quantity": c["quantity_after"] if c["status"] == "ACTIVE"
                 else 0, "version": c["version"], "status": c["status"]}
        if "lead_time_days" in c:
            entry["lead_time_days"] = c["lead_time_days"]
        out[supplier_id] = entry
    return out


def compare_cache(platform_sku: str, expected: Mapping[str, Mapping[str, Any]],
                  actual: Mapping[str, Any] | None) -> list[Difference]:
    """One Redis hash (RedisCache.get) against the expected entries.

    A hash not marked complete may lack suppliers that changed before it was (re)created
    (TTL, Redis lost): absent suppliers are then not drift, and totals are not compared.
    """
    if actual is None:
        return [Difference("redis", platform_sku, "", MISSING, sorted(expected), None)]
    suppliers = actual["suppliers"]
    fields = CACHE_FIELDS + (("lead_time_days",) if any("lead_time_days" in e
                                                        for e in expected.values()) else ())
    diffs = compare_entries("redis", platform_sku, expected, suppliers, fields)
    complete = actual.get("complete") or set(expected) <= set(suppliers)
    if not complete:
        diffs = [d for d in diffs if d.kind != MISSING]
    # Derived fields must follow from the entries Redis holds (the script recomputes them).
    held = {s: {**e, "lead_time_days": e.get("lead_time_days")} for s, e in suppliers.items()}
    total = total_available(held)
    best = best_supplier(held) if total > 0 else None
    if actual["total"] != total:
        diffs.append(Difference("redis", platform_sku, "total", MISMATCH, total,
                                actual["total"]))
    if actual["best_supplier"] != best:
        diffs.append(Difference("redis", platform_sku, "best", MISMATCH, best,
                                actual["best_supplier"]))
    return diffs


def compare_stock_table(expected: Mapping[bytes, Mapping[str, Any]],
                        actual: Mapping[bytes, Mapping[str, Any]]) -> list[Difference]:
    """The worker's `stock` table (from its changelog) against the folded one."""
    out: list[Difference] = []
    for key in expected.keys() | actual.keys():
        name = key.decode("utf-8", "backslashreplace")
        exp, act = expected.get(key), actual.get(key)
        out.extend(compare_entries("table:stock", name, {"": exp} if exp else {},
                                   {"": act} if act else {}, STOCK_FIELDS))
    return out


def compare_availability_table(expected: Mapping[str, Mapping[str, Any]],
                               actual: Mapping[str, Mapping[str, Any]]) -> list[Difference]:
    """The worker's `availability` table (from its changelog) against the folded one."""
    out: list[Difference] = []
    for key in expected.keys() | actual.keys():
        exp, act = expected.get(key), actual.get(key)
        out.extend(compare_entries("table:availability", key,
                                   exp["suppliers"] if exp else {},
                                   act["suppliers"] if act else {}, AVAILABILITY_FIELDS))
        if exp and act and _same_versions(exp, act):
            for f in ("total", "best_supplier"):
                if exp[f] != act[f]:
                    out.append(Difference("table:availability", key, f, MISMATCH, exp[f], act[f]))
    return out


def _same_versions(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    va = {s: e["version"] for s, e in a["suppliers"].items()}
    vb = {s: e["version"] for s, e in b["suppliers"].items()}
    return va == vb
