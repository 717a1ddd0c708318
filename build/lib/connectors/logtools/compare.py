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

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pipeline.aggregate import best_supplier, total_available

OK = "ok"
AHEAD = "ahead"
BEHIND = "behind"
MISSING = "missing"
MISMATCH = "mismatch"
UNEXPECTED = "unexpected"
ABSENT = "absent"  # no Redis hash at all: a cache miss unless --require-cache
DRIFT_KINDS = frozenset({BEHIND, MISSING, MISMATCH, UNEXPECTED})

CASSANDRA_FIELDS = ("sku", "quantity", "version", "status", "lead_time_days", "price",
                    "currency", "updated_at")
CACHE_FIELDS = ("sku", "quantity", "version", "status")

@cache
def stock_fields() -> tuple[str, ...]:
    """Every field of StockState (the schema's, so a new field is compared without an edit)."""
    from schemas.codec import schema_json

    return tuple(f["name"] for f in schema_json("StockState")["fields"])

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

    def as_json(self) -> dict[str, Any]:
        """The report's shape: key, store, entry, kind, expected, found."""
        return {"store": self.store, "key": self.key, "entry": self.entry, "kind": self.kind,
                "expected": _plain(self.expected), "found": _plain(self.actual)}


def _plain(value: Any) -> Any:
    """JSON-ready: sets as sorted lists, bytes (the dedup memory) as hex."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset | list | tuple):
        items = [_plain(v) for v in value]
        return sorted(items) if isinstance(value, set | frozenset) else items
    if isinstance(value, bytes):
        return value.hex()
    return value


@dataclass
class Comparison:
    """Counts per store and kind over every key compared; the drift differences, up to `keep`.

    Keys are added one at a time (`add`) as the stores are streamed, so memory holds counters
    and at most `keep` differences, whatever the number of keys. With `defer`, a key whose
    differences include drift is only remembered in `suspects` (per store): the caller
    re-checks those keys later (the worker may still be writing them) and `settle`s the
    result with what the re-check found.
    """

    keep: int = 10_000
    defer: bool = False
    checked: Counter[str] = field(default_factory=Counter)
    kinds: Counter[tuple[str, str]] = field(default_factory=Counter)
    differences: list[Difference] = field(default_factory=list)
    suspects: dict[str, set[str]] = field(default_factory=dict)
    not_kept: int = 0

    def add(self, store: str, key: str, diffs: Iterable[Difference]) -> None:
        """One key of one store compared (diffs may be empty: the key is clean)."""
        self.checked[store] += 1
        self._record(store, key, list(diffs))

    def add_clean(self, store: str, n: int) -> None:
        """n keys of a store compared and found identical."""
        self.checked[store] += n

    def _record(self, store: str, key: str, diffs: list[Difference]) -> None:
        if not diffs:
            return
        if self.defer and any(d.is_drift for d in diffs):
            self.suspects.setdefault(store, set()).add(key)
            return
        for d in diffs:
            self.kinds[(store, d.kind)] += 1
            if not d.is_drift:
                continue  # ahead / absent: counted, not reported one by one
            if len(self.differences) < self.keep:
                self.differences.append(d)
            else:
                self.not_kept += 1

    def settle(self, recheck: Comparison) -> None:
        """Take the re-check's findings for the suspect keys (counted once, in `checked`)."""
        for (store, kind), n in recheck.kinds.items():
            self.kinds[(store, kind)] += n
        room = max(0, self.keep - len(self.differences))
        self.differences.extend(recheck.differences[:room])
        self.not_kept += recheck.not_kept + max(0, len(recheck.differences) - room)
        self.suspects = {}
        self.defer = False

    def drift(self) -> list[Difference]:
        """The drift differences kept (`drift_count` counts all of them)."""
        return list(self.differences)

    def count(self, kind: str, store: str | None = None) -> int:
        return sum(n for (s, k), n in self.kinds.items()
                   if k == kind and (store is None or s == store))

    def drift_count(self, store: str | None = None) -> int:
        return sum(n for (s, k), n in self.kinds.items()
                   if k in DRIFT_KINDS and (store is None or s == store))


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


def compare_stock_entry(key: str, expected: Mapping[str, Any] | None,
                        actual: Mapping[str, Any] | None) -> list[Difference]:
    """One key of the worker's `stock` table (from its changelog) against the folded one."""
    return compare_entries("table:stock", key, {"": expected} if expected else {},
                           {"": actual} if actual else {}, stock_fields())


def compare_availability_entry(platform_sku: str, expected: Mapping[str, Any] | None,
                               actual: Mapping[str, Any] | None) -> list[Difference]:
    """One key of the worker's `availability` table (from its changelog) against the fold."""
    out = compare_entries("table:availability", platform_sku,
                          expected["suppliers"] if expected else {},
                          actual["suppliers"] if actual else {}, AVAILABILITY_FIELDS)
    if expected and actual and _same_versions(expected, actual):
        for f in ("total", "best_supplier"):
            if expected[f] != actual[f]:
                out.append(Difference("table:availability", platform_sku, f, MISMATCH,
                                      expected[f], actual[f]))
    return out


def _same_versions(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    va = {s: e["version"] for s, e in a["suppliers"].items()}
    vb = {s: e["version"] for s, e in b["suppliers"].items()}
    return va == vb
