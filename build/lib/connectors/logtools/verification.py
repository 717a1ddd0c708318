"""verify's engine: fold the log compactly, then stream every store past the folded state.

Memory is the folded state (what the worker's tables hold, plus one compact expected entry
per Cassandra row / Redis field) and fixed-size batches: Cassandra is read in token ranges
with a fixed page size and a bounded number of reader threads, Redis with SCAN and pipelined
HGETALL on a pool of two connections, the changelogs record by record. Each key is compared
as it streams past and only counters, the differences (up to a cap) and, for a re-check, the
drifted keys are kept.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from connectors.logtools import compare as cmp
from connectors.logtools.fold import LogFold, Step
from pipeline.aggregate import ACTIVE

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

    from connectors.logtools.log_reader import LogReader
    from connectors.redis.read import AvailabilityHashReader
    from pipeline.settings import Settings

STORES = ("cassandra", "redis", "table:stock", "table:availability")

# Cassandra: rows per page, token ranges, ranges read at once (a reader thread each).
CASSANDRA_FETCH_SIZE = 2000
CASSANDRA_SPLITS = 16
CASSANDRA_CONCURRENCY = 2
# Per-SKU reads (--sample, re-check): queries in flight.
CASSANDRA_KEY_CONCURRENCY = 16
# Redis: keys per SCAN step and per HGETALL pipeline; connections in the pool.
REDIS_BATCH = 500
REDIS_MAX_CONNECTIONS = 2


class Progress(Protocol):
    """Where verify reports how far it is (a progress bar, log lines, or nothing)."""

    def start(self, phase: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Reports nothing (--json)."""

    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


class ExpectedEntry(NamedTuple):
    """What Cassandra's row and Redis's fields of one (platform SKU, supplier) must hold.

    Taken from the last StockUpdate the fold wrote for the entry (the InventoryChange of the
    same step carries the same values); a tuple of ~130 bytes instead of the two dicts
    (~1.3 KB) LogFold keeps for the replay.
    """

    sku: str
    quantity: int
    version: int
    status: str
    lead_time_days: int | None
    price: str | None
    currency: str | None
    observed_at: int

    @classmethod
    def of(cls, update: dict[str, Any]) -> ExpectedEntry:
        return cls(update["sku"], update["quantity_after"], update["version"],
                   update["status"], update.get("lead_time_days"), update.get("price"),
                   update.get("currency"), update["observed_at"])

    def cassandra_row(self) -> dict[str, Any]:
        """As connectors.logtools.fold.cassandra_row gives it (cassandra_read shape)."""
        return {"sku": self.sku, "quantity": self.quantity, "version": self.version,
                "status": self.status, "lead_time_days": self.lead_time_days,
                "price": self.price, "currency": self.currency, "updated_at": self.observed_at}

    def cache_entry(self) -> dict[str, Any]:
        """As compare.expected_cache_entries gives it (the change always carries lead time)."""
        return {"sku": self.sku, "quantity": self.quantity if self.status == ACTIVE else 0,
                "version": self.version, "status": self.status,
                "lead_time_days": self.lead_time_days}


@dataclass
class VerifyFold(LogFold):
    """LogFold that keeps one ExpectedEntry per entry instead of the last update and change.

    The fold's decisions are LogFold's own (this only moves what apply stored); `stock` and
    `availability` stay as they are, since the next record's decision needs them.
    """

    entries: dict[tuple[str, str], ExpectedEntry] = field(default_factory=dict)

    def apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int,
              partition: int = 0) -> Step:
        step = super().apply(key, value, timestamp_ms, partition)
        update = step.update
        if update is not None:
            entry = (update["platform_sku"], update["supplier_id"])
            del self.rows[entry]
            del self.changes[entry]
            self.entries[entry] = ExpectedEntry.of(update)
        return step

    def expected(self, platform_sku: str) -> dict[str, ExpectedEntry]:
        """The expected entries of one platform SKU by supplier ({} when the log has none)."""
        avail = self.availability.get(platform_sku)
        if avail is None:
            return {}
        out = {}
        for supplier_id in avail["suppliers"]:
            e = self.entries.get((platform_sku, supplier_id))
            if e is not None:
                out[supplier_id] = e
        return out


def new_verify_fold(settings: Settings) -> VerifyFold:
    """A VerifyFold configured like the worker (catalog, dedup TTL), as runner.new_fold."""
    from pipeline.catalog import Catalog

    catalog = Catalog.from_file(settings.catalog_path) if settings.catalog_path \
        else Catalog.empty()
    return VerifyFold(catalog=catalog, dedup_ttl_ms=settings.dedup_ttl_s * 1000,
                      wall_clock_ms=lambda: int(time.time() * 1000))


# --- comparisons over streams (no I/O: the sources are iterables) ---------------------------

AvailabilityReads = Iterable[tuple[str, dict[str, Any] | None]]
HashBatches = Iterable[list[tuple[str, dict[str, Any] | None]]]


def _cassandra_diffs(fold: VerifyFold, sku: str,
                     actual: dict[str, Any] | None) -> list[cmp.Difference]:
    expected = {s: e.cassandra_row() for s, e in fold.expected(sku).items()}
    return cmp.compare_cassandra(sku, expected, actual)


def compare_cassandra_scan(fold: VerifyFold, result: cmp.Comparison,
                           partitions: Iterable[dict[str, Any]],
                           progress: Progress = NoProgress()) -> None:
    """Every partition of a table scan (cassandra_read shape), then the SKUs it lacked."""
    unseen = set(fold.availability)
    for actual in partitions:
        sku = actual["platform_sku"]
        unseen.discard(sku)
        result.add("cassandra", sku, _cassandra_diffs(fold, sku, actual))
        progress.advance()
    for sku in unseen:
        result.add("cassandra", sku, _cassandra_diffs(fold, sku, None))
        progress.advance()


def compare_cassandra_keys(fold: VerifyFold, result: cmp.Comparison, reads: AvailabilityReads,
                           progress: Progress = NoProgress()) -> None:
    """(platform SKU, availability or None) read one by one (--sample, re-check)."""
    for sku, actual in reads:
        result.add("cassandra", sku, _cassandra_diffs(fold, sku, actual))
        progress.advance()


def _redis_diffs(fold: VerifyFold, sku: str, actual: dict[str, Any] | None,
                 require_cache: bool) -> list[cmp.Difference] | None:
    """None when there is nothing to compare (no entry expected, no hash)."""
    expected = {s: e.cache_entry() for s, e in fold.expected(sku).items()}
    if not expected and actual is None:
        return None
    diffs = cmp.compare_cache(sku, expected, actual)
    if not require_cache:
        # An absent hash is a cache miss (TTL, eviction), refilled on read.
        diffs = [cmp.Difference(d.store, d.key, d.entry, cmp.ABSENT, d.expected, None)
                 if d.kind == cmp.MISSING and d.entry == "" else d for d in diffs]
    return diffs


def compare_redis_scan(fold: VerifyFold, result: cmp.Comparison, scanned: HashBatches,
                       read: Callable[[Iterable[str]], HashBatches], *,
                       require_cache: bool = False,
                       progress: Progress = NoProgress()) -> None:
    """Every hash SCAN returned, then a direct read of the expected SKUs it did not return.

    SCAN may return a key twice (compared once) and misses keys created while it ran (the
    direct read finds them).
    """
    unseen = set(fold.availability)
    unexpected_seen: set[str] = set()
    for batch in scanned:
        for sku, actual in batch:
            if sku in unseen:
                unseen.discard(sku)
            elif sku in fold.availability or sku in unexpected_seen:
                continue  # returned twice by SCAN
            else:
                unexpected_seen.add(sku)
            diffs = _redis_diffs(fold, sku, actual, require_cache)
            if diffs is not None:
                result.add("redis", sku, diffs)
        progress.advance(len(batch))
    wanted = (sku for sku in unseen if fold.expected(sku))
    compare_redis_keys(fold, result, read(wanted), require_cache=require_cache,
                       progress=progress)


def compare_redis_keys(fold: VerifyFold, result: cmp.Comparison, batches: HashBatches, *,
                       require_cache: bool = False,
                       progress: Progress = NoProgress()) -> None:
    """Hashes read for given platform SKUs (None: absent)."""
    for batch in batches:
        for sku, actual in batch:
            diffs = _redis_diffs(fold, sku, actual, require_cache)
            if diffs is not None:
                result.add("redis", sku, diffs)
        progress.advance(len(batch))


ChangelogRecords = Iterable[tuple[bytes, bytes | None]]


def compare_changelog(store: str, result: cmp.Comparison, records: ChangelogRecords, *,
                      expected: Callable[[bytes], dict[str, Any] | None],
                      expected_keys: Iterable[bytes],
                      decode: Callable[[bytes], dict[str, Any]],
                      compare: Callable[[str, dict[str, Any] | None, dict[str, Any] | None],
                                        list[cmp.Difference]],
                      only: set[str] | None = None,
                      progress: Progress = NoProgress()) -> None:
    """A table's changelog against the folded table, record by record (the last one counts).

    Only keys whose latest record differs are held (`pending`), plus the expected keys not
    seen yet; a tombstone removes a key. `only` limits the check to those keys (re-check).
    """
    unseen = set(expected_keys)
    n_expected = len(unseen)
    pending: dict[bytes, list[cmp.Difference]] = {}
    for key, raw in records:
        progress.advance()
        name = key.decode("utf-8", "backslashreplace")
        if only is not None and name not in only:
            continue
        exp = expected(key)
        if raw is None:  # tombstone: the table no longer holds the key
            pending.pop(key, None)
            if exp is not None:
                unseen.add(key)
            continue
        diffs = compare(name, exp, decode(raw))
        unseen.discard(key)
        if diffs:
            pending[key] = diffs
        else:
            pending.pop(key, None)
    unexpected = sum(1 for key in pending if expected(key) is None)
    result.add_clean(store, n_expected - len(unseen) - (len(pending) - unexpected))
    for key, diffs in pending.items():
        result.add(store, key.decode("utf-8", "backslashreplace"), diffs)
    for key in unseen:
        name = key.decode("utf-8", "backslashreplace")
        result.add(store, name, compare(name, expected(key), None))


# --- the run --------------------------------------------------------------------------------


@dataclass
class Verification:
    """One verify run's connections (opened once, closed at the end) and its folded state."""

    settings: Settings
    progress: Progress = field(default_factory=NoProgress)
    fold: VerifyFold = field(init=False)
    reader: LogReader = field(init=False)
    end: dict[int, int] = field(default_factory=dict)
    records: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    _cluster: Cluster | None = None
    _session: Session | None = None
    _redis: AvailabilityHashReader | None = None

    def __post_init__(self) -> None:
        from connectors.logtools.runner import new_reader

        self.fold = new_verify_fold(self.settings)
        self.reader = new_reader(self.settings)

    def __enter__(self) -> Verification:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        if self._redis is not None:
            self._redis.close()
        if self._cluster is not None:
            self._cluster.shutdown()

    # connections, opened on first use
    @property
    def session(self) -> Session:
        if self._session is None:
            from connectors.cassandra.cluster import ClusterConfig, connect

            self._cluster, self._session = connect(ClusterConfig.from_settings(self.settings))
        return self._session

    @property
    def redis(self) -> AvailabilityHashReader:
        if self._redis is None:
            from connectors.redis.read import AvailabilityHashReader

            s = self.settings
            self._redis = AvailabilityHashReader(
                s.redis_url.get_secret_value(), s.redis_cache_key_prefix, batch=REDIS_BATCH,
                max_connections=REDIS_MAX_CONNECTIONS, client_name=f"{s.app_id}-verify")
        return self._redis

    def connections(self) -> dict[str, int]:
        """Connections open to Cassandra (pools + control) and made to Redis."""
        out: dict[str, int] = {}
        if self._session is not None:
            state = self._session.get_pool_state()
            out["cassandra"] = 1 + sum(int(s.get("open_count", 0)) for s in state.values())
        if self._redis is not None:
            out["redis"] = self._redis.connections_opened
        return out

    # the fold
    def fold_to_end(self) -> int:
        """Fold the log from its beginning (or from where the last fold ended) to its end now."""
        from confluent_kafka import KafkaException

        from connectors.logtools.log_reader import ReplayError

        try:
            marks = self.reader.watermarks()
        except KafkaException as exc:
            raise ReplayError(f"reading the offsets of {self.reader.topic}: {exc}") from exc
        start = {p: self.end.get(p, lo) for p, (lo, _hi) in marks.items()}
        end = {p: hi for p, (_lo, hi) in marks.items()}
        t0 = time.monotonic()
        self.progress.start("fold inventory.deltas", sum(max(0, end[p] - start[p]) for p in end))
        n = 0
        fold = self.fold
        for batch in self.reader.read(start, end):
            for r in batch:
                fold.apply(r.key, r.value, r.timestamp_ms, r.partition)
            n += len(batch)
            self.progress.advance(len(batch))
        self.progress.finish()
        self.end = end
        self.records += n
        self._phase("fold", t0)
        return n

    def sample(self, n: int, seed: int | None) -> list[str]:
        skus = sorted(self.fold.availability)
        return skus if n >= len(skus) else sorted(random.Random(seed).sample(skus, n))

    # the stores
    def check(self, result: cmp.Comparison, skus: list[str] | None, *, cache: bool,
              tables: bool, require_cache: bool) -> None:
        """Compare every store (skus None: everything; else those platform SKUs)."""
        self.check_cassandra(result, skus)
        if cache:
            self.check_redis(result, skus, require_cache=require_cache)
        if tables:
            if skus is None:
                self.check_tables(result, None, None)
            else:
                wanted = set(skus)
                stock_keys = {k.decode("utf-8", "backslashreplace")
                              for k, v in self.fold.stock.items()
                              if v["platform_sku"] in wanted}
                self.check_tables(result, stock_keys, wanted)

    def recheck(self, result: cmp.Comparison, *, require_cache: bool) -> int:
        """Compare the suspect keys again (after the fold was extended); returns their number."""
        again = cmp.Comparison(keep=result.keep)
        suspects = result.suspects
        if "cassandra" in suspects:
            self.check_cassandra(again, sorted(suspects["cassandra"]))
        if "redis" in suspects:
            self.check_redis(again, sorted(suspects["redis"]), require_cache=require_cache)
        if "table:stock" in suspects or "table:availability" in suspects:
            self.check_tables(again, suspects.get("table:stock", set()),
                              suspects.get("table:availability", set()))
        n = sum(len(keys) for keys in suspects.values())
        result.settle(again)
        return n

    def check_cassandra(self, result: cmp.Comparison, skus: list[str] | None) -> None:
        from connectors.cassandra.read import read_many_availability, scan_sku_availability

        t0 = time.monotonic()
        ks = self.settings.cassandra_keyspace
        self.progress.start("cassandra", len(self.fold.availability) if skus is None
                            else len(skus))
        if skus is None:
            compare_cassandra_scan(self.fold, result, scan_sku_availability(
                self.session, ks, fetch_size=CASSANDRA_FETCH_SIZE, splits=CASSANDRA_SPLITS,
                concurrency=CASSANDRA_CONCURRENCY), self.progress)
        else:
            compare_cassandra_keys(self.fold, result, read_many_availability(
                self.session, ks, skus, concurrency=CASSANDRA_KEY_CONCURRENCY), self.progress)
        self.progress.finish()
        self._phase("cassandra", t0)

    def check_redis(self, result: cmp.Comparison, skus: list[str] | None, *,
                    require_cache: bool) -> None:
        t0 = time.monotonic()
        self.progress.start("redis", len(self.fold.availability) if skus is None else len(skus))
        if skus is None:
            compare_redis_scan(self.fold, result, self.redis.scan(), self.redis.read,
                               require_cache=require_cache, progress=self.progress)
        else:
            compare_redis_keys(self.fold, result, self.redis.read(skus),
                               require_cache=require_cache, progress=self.progress)
        self.progress.finish()
        self._phase("redis", t0)

    def check_tables(self, result: cmp.Comparison, stock_keys: set[str] | None,
                     skus: set[str] | None) -> None:
        """The worker's tables, from their changelogs (None: every key)."""
        from connectors.logtools.rebuild import changelog_topic
        from schemas.codec import codec_for

        fold = self.fold
        for store, table, record, keys, expected, expected_keys, compare in (
            ("table:stock", "stock", "StockState", stock_keys, fold.stock.get,
             fold.stock, cmp.compare_stock_entry),
            ("table:availability", "availability", "Availability", skus,
             lambda k: fold.availability.get(k.decode("utf-8", "backslashreplace")),
             (s.encode() for s in fold.availability), cmp.compare_availability_entry),
        ):
            if keys is not None and not keys:
                continue
            t0 = time.monotonic()
            topic = changelog_topic(self.settings, table)
            records = ChangelogStream(self.settings, topic)
            self.progress.start(store, records.total)
            wanted: Iterable[bytes] = expected_keys if keys is None else [
                k.encode() for k in keys if expected(k.encode()) is not None]
            compare_changelog(store, result, records, expected=expected,
                              expected_keys=wanted, decode=codec_for(record).decode,
                              compare=compare, only=keys, progress=self.progress)
            self.progress.finish()
            self._phase(store, t0)

    def _phase(self, name: str, t0: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - t0


class ChangelogStream:
    """A table changelog's records (key, raw value or None), read committed, in batches."""

    def __init__(self, settings: Settings, topic: str, *, batch: int = 5000,
                 timeout_s: float = 60.0) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from pipeline.kafka import nonempty_partitions

        self.topic = topic
        self.batch = batch
        self.timeout_s = timeout_s
        self._consumer = Consumer({
            **settings.confluent_config(), "group.id": f"{settings.app_id}-verify",
            "enable.auto.commit": False, "enable.partition.eof": True,
            "isolation.level": "read_committed",
            # Bounded prefetch: librdkafka's default queue holds up to 1 GB per consumer.
            "queued.max.messages.kbytes": 64 * 1024,
        })
        self.assignment: list[TopicPartition] = []
        self.total = 0
        for tp in nonempty_partitions(self._consumer, topic, timeout_s) or []:
            _lo, hi = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)
            self.assignment.append(tp)
            self.total += hi - tp.offset

    def __iter__(self) -> Iterator[tuple[bytes, bytes | None]]:
        from connectors.logtools.log_reader import ReplayError
        from pipeline.kafka import read_to_end

        try:
            for msg in read_to_end(self._consumer, self.assignment, batch=self.batch,
                                   timeout_s=self.timeout_s, error=ReplayError):
                yield msg.key() or b"", msg.value()
        finally:
            self._consumer.close()


def verify_stores(settings: Settings, progress: Progress, *, sample: int | None,
                  seed: int | None, settle: float, max_listed: int, cache: bool, tables: bool,
                  require_cache: bool) -> dict[str, Any]:
    """`stockflow verify`: fold the log to its end, compare Cassandra (and Redis, the worker's
    tables) with it, re-check after `settle` seconds what the worker may still be writing,
    and return the report."""
    t0 = time.monotonic()
    with Verification(settings, progress=progress) as v:
        v.fold_to_end()
        skus = None if sample is None else v.sample(sample, seed)
        result = cmp.Comparison(keep=max_listed, defer=settle > 0)
        v.check(result, skus, cache=cache, tables=tables, require_cache=require_cache)
        rechecked = 0
        if result.suspects:
            # The worker may not have written what the log already holds: give it time,
            # extend the fold to the new log end, and look at those keys again.
            time.sleep(settle)
            v.fold_to_end()
            rechecked = v.recheck(result, require_cache=require_cache)
        return verify_report(v, result, rechecked=rechecked, settle=settle,
                             seconds=time.monotonic() - t0)


def verify_report(v: Verification, result: cmp.Comparison, *, rechecked: int, settle: float,
           seconds: float) -> dict[str, Any]:
    """The verify report (`stockflow verify --json` prints it): counts per store and kind,
    the differences listed, the phases' times and the connections opened."""
    stores: dict[str, dict[str, Any]] = {}
    for store, checked in result.checked.items():
        kinds = {k: n for (s, k), n in sorted(result.kinds.items()) if s == store}
        stores[store] = {"checked": checked, "drift": result.drift_count(store),
                         "ahead": kinds.get(cmp.AHEAD, 0), "absent": kinds.get(cmp.ABSENT, 0),
                         "by_kind": kinds}
    drift = result.drift_count()
    by_kind = Counter({k: n for (_s, k), n in result.kinds.items() if k in cmp.DRIFT_KINDS})
    return {
        "status": "drift" if drift else "clean",
        "log_records": v.records,
        "platform_skus": len(v.fold.availability),
        "supplier_skus": len(v.fold.stock),
        "stores": stores,
        "drift": drift,
        "drift_by_kind": dict(sorted(by_kind.items())),
        "differences": [d.as_json() for d in sorted(
            result.differences, key=lambda d: (d.store, d.key, d.entry))],
        "differences_not_listed": result.not_kept,
        "rechecked": rechecked,
        "settle_s": settle,
        "seconds": round(seconds, 2),
        "phases_s": {k: round(t, 2) for k, t in v.phases.items()},
        "connections": v.connections(),
    }
