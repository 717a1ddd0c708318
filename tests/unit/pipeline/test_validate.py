"""Unit tests of the SupplierDelta business rules, their reason codes and DeadLetter records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import validate as v
from pipeline.errors import ValidationError
from schemas.codec import codec_for

NOW = 1_760_000_000_000  # 2025-10-09, epoch ms


@pytest.fixture
def make_delta() -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        delta: dict[str, Any] = {
            "supplier_id": "acme-1",
            "sku": "SKU-1",
            "event_id": "ev-1",
            "sequence": 1,
            "kind": "SNAPSHOT",
            "quantity": 10,
            "observed_at": NOW - 1000,
            "price": "12.50",
            "currency": "EUR",
            "warehouse": "berlin",
            "lead_time_days": 3,
            "status": "ACTIVE",
            "connector": "rest",
            "received_at": NOW - 500,
        }
        delta.update(overrides)
        return delta

    return make


def own_key(delta: Any) -> bytes:
    """The Kafka key a correct producer would send with this record."""
    if not isinstance(delta, dict):
        return b"s|k"
    supplier_id, sku = delta.get("supplier_id"), delta.get("sku")
    if not isinstance(supplier_id, str) or not isinstance(sku, str):
        return b"s|k"
    return f"{supplier_id}|{sku}".encode("utf-8", "surrogatepass")


OWN_KEY: Any = object()  # rejects(): send the record's own supplier_id|sku as its key


def accept(delta: dict[str, Any], *, now_ms: int = NOW, **kwargs: Any) -> dict[str, Any]:
    return v.validate_delta(delta, key=own_key(delta), now_ms=now_ms, **kwargs)


def rejects(delta: Any, *, key: bytes | None = OWN_KEY, now_ms: int = NOW) -> str:
    with pytest.raises(ValidationError) as info:
        v.validate_delta(delta, key=own_key(delta) if key is OWN_KEY else key, now_ms=now_ms)
    assert info.value.code in v.REASON_CODES
    assert info.value.message
    return info.value.code


def test_valid_delta_round_trips_through_avro(make_delta: Callable[..., dict[str, Any]]) -> None:
    delta = make_delta()
    out = v.validate_delta(delta, key=b"acme-1|SKU-1", now_ms=NOW)
    assert out == delta
    codec = codec_for("SupplierDelta")
    assert codec.decode(codec.encode(out)) == out


def test_normalisation_fills_defaults_and_drops_unknown_fields() -> None:
    minimal = {
        "supplier_id": "s",
        "sku": "k",
        "event_id": "e",
        "sequence": 7,
        "kind": "ADJUSTMENT",
        "quantity": -3,
        "observed_at": NOW,
        "extra": "ignored",
    }
    out = accept(minimal)
    assert out == {
        **{k: val for k, val in minimal.items() if k != "extra"},
        "price": None,
        "currency": None,
        "warehouse": None,
        "lead_time_days": None,
        "status": "ACTIVE",
        "connector": "unknown",
        "received_at": NOW,
    }
    assert "extra" in minimal  # the input is not mutated


def test_reason_codes_are_unique_and_include_decode_error() -> None:
    assert len(set(v.REASON_CODES)) == len(v.REASON_CODES)
    assert v.DECODE_ERROR == "decode_error"
    assert v.DECODE_ERROR in v.REASON_CODES


@pytest.mark.parametrize("supplier_id", ["a", "A-b_c.9", "x" * 64])
def test_supplier_id_accepted(make_delta: Callable[..., dict[str, Any]], supplier_id: str) -> None:
    assert accept(make_delta(supplier_id=supplier_id))


@pytest.mark.parametrize(
    "supplier_id", ["", "x" * 65, "acme 1", "acme|1", "acmé", "a/b", "a\n", "١٢"]
)
def test_supplier_id_rejected(make_delta: Callable[..., dict[str, Any]], supplier_id: str) -> None:
    assert rejects(make_delta(supplier_id=supplier_id)) == v.BAD_SUPPLIER_ID


@pytest.mark.parametrize(
    "sku",
    [
        "A",
        "x" * 128,
        'it\'s "quoted"',
        "SELECT * FROM stock; DROP TABLE x",
        "Größe-42 日本",
        "a b",
        "emoji-📦",
    ],
)
def test_sku_accepted(make_delta: Callable[..., dict[str, Any]], sku: str) -> None:
    out = v.validate_delta(make_delta(sku=sku), key=v.delta_key("acme-1", sku), now_ms=NOW)
    assert out["sku"] == sku


@pytest.mark.parametrize(
    "sku",
    [
        "",
        "x" * 129,
        "a|b",
        " lead",
        "trail ",
        "tab\there",
        "nul\x00",
        "line\nbreak",
        "del\x7f",
        "zero\u200bwidth",
        "nbsp\u00a0x",
        "sep\u2028x",
        "lone\ud800surrogate",
    ],
)
def test_sku_rejected(make_delta: Callable[..., dict[str, Any]], sku: str) -> None:
    assert rejects(make_delta(sku=sku)) == v.BAD_SKU


@pytest.mark.parametrize("event_id", ["", "e" * 129, "e\x00", "e\r\n"])
def test_event_id_rejected(make_delta: Callable[..., dict[str, Any]], event_id: str) -> None:
    assert rejects(make_delta(event_id=event_id)) == v.BAD_EVENT_ID


def test_event_id_may_hold_any_printable_text(make_delta: Callable[..., dict[str, Any]]) -> None:
    out = accept(make_delta(event_id="e|1 'x' ü" + "e" * 119))
    assert len(out["event_id"]) == 128


MAX_SPARSE = (NOW + v.DEFAULT_LIMITS.max_future_ms) * 1000  # the record's time + skew, in us


@pytest.mark.parametrize("sequence", [0, -1, 2**63, 2**63 - 1, MAX_SPARSE + 1, NOW * 1000 * 2])
def test_sequence_rejected(make_delta: Callable[..., dict[str, Any]], sequence: int) -> None:
    assert rejects(make_delta(sequence=sequence)) == v.BAD_SEQUENCE


@pytest.mark.parametrize("sequence", [1, 10**12 - 1, 10**12, NOW * 1000, MAX_SPARSE])
def test_sequence_accepted(make_delta: Callable[..., dict[str, Any]], sequence: int) -> None:
    assert accept(make_delta(sequence=sequence))


def test_sparse_sequence_follows_the_records_clock(
    make_delta: Callable[..., dict[str, Any]],
) -> None:
    # One future timestamp-sequence would make every later event of the SKU stale: 2^63-1 for
    # ever. It is judged by the record's own (Kafka) time, so a replay rejects it again.
    delta = make_delta(sequence=(NOW + 3_600_000) * 1000)
    assert rejects(delta) == v.BAD_SEQUENCE
    assert accept(delta, now_ms=NOW + 3_600_000 - v.DEFAULT_LIMITS.max_future_ms)
    # A dense counter (< 10^12) is never near the bound: no valid record is older than 2000.
    assert v.DEFAULT_LIMITS.min_observed_at_ms * 1000 > 900 * 10**12


def test_snapshot_quantity_bounds(make_delta: Callable[..., dict[str, Any]]) -> None:
    limit = v.DEFAULT_LIMITS.max_quantity
    assert accept(make_delta(quantity=0))
    assert accept(make_delta(quantity=limit))
    assert rejects(make_delta(quantity=-1)) == v.NEGATIVE_SNAPSHOT
    assert rejects(make_delta(quantity=limit + 1)) == v.QUANTITY_OUT_OF_RANGE


def test_adjustment_quantity_bounds(make_delta: Callable[..., dict[str, Any]]) -> None:
    limit = v.DEFAULT_LIMITS.max_quantity
    for quantity in (-limit, -1, 0, limit):
        delta = make_delta(kind="ADJUSTMENT", quantity=quantity)
        assert accept(delta)["quantity"] == quantity
    assert rejects(make_delta(kind="ADJUSTMENT", quantity=limit + 1)) == v.QUANTITY_OUT_OF_RANGE
    assert rejects(make_delta(kind="ADJUSTMENT", quantity=-limit - 1)) == v.QUANTITY_OUT_OF_RANGE


def test_limits_are_configurable(make_delta: Callable[..., dict[str, Any]]) -> None:
    tight = v.ValidationLimits(max_quantity=5)
    with pytest.raises(ValidationError) as info:
        accept(make_delta(quantity=6), limits=tight)
    assert info.value.code == v.QUANTITY_OUT_OF_RANGE
    with pytest.raises(AttributeError):
        tight.max_quantity = 7  # type: ignore[misc]


@pytest.mark.parametrize("field", ["observed_at", "received_at"])
def test_timestamp_window(make_delta: Callable[..., dict[str, Any]], field: str) -> None:
    limits = v.DEFAULT_LIMITS
    assert accept(make_delta(**{field: NOW + limits.max_future_ms}))
    assert accept(make_delta(**{field: limits.min_observed_at_ms}))
    future = make_delta(**{field: NOW + limits.max_future_ms + 1})
    assert rejects(future) == v.TIMESTAMP_IN_FUTURE
    assert rejects(make_delta(**{field: limits.min_observed_at_ms - 1})) == v.TIMESTAMP_TOO_OLD
    # Seconds instead of milliseconds is a classic producer bug: far too old.
    assert rejects(make_delta(**{field: NOW // 1000})) == v.TIMESTAMP_TOO_OLD


def test_future_rule_follows_the_given_clock(make_delta: Callable[..., dict[str, Any]]) -> None:
    delta = make_delta(observed_at=NOW + 3_600_000)
    assert rejects(delta) == v.TIMESTAMP_IN_FUTURE
    assert accept(delta, now_ms=NOW + 3_600_000)


@pytest.mark.parametrize(
    "price", [None, "0", "12", "12.5", "12.5000", "999999999.9999", "1000000000"]
)
def test_price_accepted(make_delta: Callable[..., dict[str, Any]], price: str | None) -> None:
    assert accept(make_delta(price=price))["price"] == price


@pytest.mark.parametrize(
    "price",
    [
        "",
        "-1",
        "+1",
        "1.23456",
        "1e3",
        "NaN",
        "Infinity",
        "1,5",
        ".5",
        "5.",
        " 5",
        "1000000000.0001",
        "١٢",
        12.5,
        12,
    ],
)
def test_price_rejected(make_delta: Callable[..., dict[str, Any]], price: object) -> None:
    assert rejects(make_delta(price=price)) == v.BAD_PRICE


@pytest.mark.parametrize(
    "currency",
    ["eur", "EU", "EURO", "E1R", "ÉUR", "EUR\n", 978, ["EUR"], "AAA", "ZZZ", "XTS", "XXX", "DEM",
     "HRK", "\uff25\uff35\uff32"],
)
def test_currency_rejected(make_delta: Callable[..., dict[str, Any]], currency: object) -> None:
    # Shape is not enough: AAA and ZZZ are three capitals but no currency.
    assert rejects(make_delta(currency=currency)) == v.BAD_CURRENCY


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY", "CHF", "XAU", "XCG", "ZWG", "SLE"])
def test_currency_accepted(make_delta: Callable[..., dict[str, Any]], currency: str) -> None:
    assert accept(make_delta(currency=currency))["currency"] == currency


def test_currency_list_is_iso_4217_shaped() -> None:
    assert len(v.ISO_4217_CURRENCIES) == 178
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in v.ISO_4217_CURRENCIES)


def test_currency_optional(make_delta: Callable[..., dict[str, Any]]) -> None:
    assert accept(make_delta(currency=None))["currency"] is None


@pytest.mark.parametrize("lead_time", [-1, 366, True, 1.5, "3"])
def test_lead_time_rejected(make_delta: Callable[..., dict[str, Any]], lead_time: object) -> None:
    assert rejects(make_delta(lead_time_days=lead_time)) == v.BAD_LEAD_TIME


@pytest.mark.parametrize("lead_time", [None, 0, 365])
def test_lead_time_accepted(
    make_delta: Callable[..., dict[str, Any]], lead_time: int | None
) -> None:
    out = accept(make_delta(lead_time_days=lead_time))
    assert out["lead_time_days"] == lead_time


@pytest.mark.parametrize(
    "overrides",
    [{"kind": "snapshot"}, {"kind": "DELTA"}, {"status": "active"}, {"status": "GONE"}],
)
def test_unknown_enum_symbols(
    make_delta: Callable[..., dict[str, Any]], overrides: dict[str, Any]
) -> None:
    assert rejects(make_delta(**overrides)) == v.BAD_ENUM


def test_warehouse_and_connector(make_delta: Callable[..., dict[str, Any]]) -> None:
    assert rejects(make_delta(warehouse="w" * 129)) == v.BAD_WAREHOUSE
    assert rejects(make_delta(warehouse="a\x00")) == v.BAD_WAREHOUSE
    assert rejects(make_delta(connector="")) == v.BAD_CONNECTOR
    assert rejects(make_delta(connector="c\n")) == v.BAD_CONNECTOR


def test_key_must_be_supplier_and_sku(make_delta: Callable[..., dict[str, Any]]) -> None:
    delta = make_delta(sku="Größe 42")
    assert v.validate_delta(delta, key="acme-1|Größe 42".encode(), now_ms=NOW)
    assert rejects(delta, key=b"acme-1|other") == v.KEY_MISMATCH
    assert rejects(delta, key=b"") == v.KEY_MISMATCH
    assert rejects(delta, key=None) == v.MISSING_KEY


def test_missing_key_is_rejected(make_delta: Callable[..., dict[str, Any]]) -> None:
    # A keyless record lands on any partition: the SKU's order (staleness, adjustments) is lost.
    assert v.MISSING_KEY == "missing_key" and v.MISSING_KEY in v.REASON_CODES
    assert rejects(make_delta(), key=None) == v.MISSING_KEY
    # Rules before the key still come first, the ones after it still follow it.
    assert rejects(make_delta(sku="a|b"), key=None) == v.BAD_SKU
    assert rejects(make_delta(kind="GONE"), key=None) == v.MISSING_KEY


def test_delta_key() -> None:
    assert v.delta_key("s1", "ü|") == "s1|ü|".encode()


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"quantity": True}, v.BAD_TYPE),
        ({"quantity": 5.0}, v.BAD_TYPE),
        ({"quantity": "5"}, v.BAD_TYPE),
        ({"sequence": "7"}, v.BAD_TYPE),
        ({"observed_at": 1.7e12}, v.BAD_TYPE),
        ({"supplier_id": 42}, v.BAD_TYPE),
        ({"sku": ["a"]}, v.BAD_TYPE),
        ({"kind": 1}, v.BAD_TYPE),
        ({"supplier_id": None}, v.MISSING_FIELD),
        ({"quantity": None}, v.MISSING_FIELD),
    ],
)
def test_wrong_types_from_json(
    make_delta: Callable[..., dict[str, Any]], overrides: dict[str, Any], code: str
) -> None:
    assert rejects(make_delta(**overrides)) == code


@pytest.mark.parametrize(
    "field", ["supplier_id", "sku", "event_id", "sequence", "kind", "quantity", "observed_at"]
)
def test_missing_required_field(make_delta: Callable[..., dict[str, Any]], field: str) -> None:
    delta = make_delta()
    del delta[field]
    assert rejects(delta) == v.MISSING_FIELD


@pytest.mark.parametrize("record", [None, [], "text", b"bytes", 5])
def test_not_a_record(record: Any) -> None:
    assert rejects(record) == v.BAD_TYPE


def test_first_broken_rule_wins(make_delta: Callable[..., dict[str, Any]]) -> None:
    delta = make_delta(supplier_id="bad id", sku="bad|sku", quantity=-5)
    assert rejects(delta) == v.BAD_SUPPLIER_ID


def test_error_message_escapes_and_truncates(make_delta: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(ValidationError) as info:
        v.validate_delta(make_delta(sku="x\ud800" * 10_000), key=b"acme-1|x", now_ms=NOW)
    assert len(info.value.message) < 400
    info.value.message.encode("utf-8")  # no lone surrogate leaks into the message


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text() | st.booleans()))
def test_any_json_object_is_accepted_or_rejected_with_a_reason(record: dict[str, Any]) -> None:
    try:
        out = v.validate_delta(record, key=own_key(record), now_ms=NOW)
    except ValidationError as exc:
        assert exc.code in v.REASON_CODES
    else:
        codec = codec_for("SupplierDelta")
        assert codec.decode(codec.encode(out)) == out


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=140))
def test_every_accepted_sku_is_a_clean_key(sku: str) -> None:
    if v.is_valid_sku(sku):
        key = v.delta_key("s", sku)
        assert key.decode("utf-8").split("|") == ["s", sku]
        assert sku.strip() == sku and sku.isprintable()


def test_dead_letter_record_encodes() -> None:
    record = v.dead_letter(
        reason=v.BAD_SKU,
        message="sku 'a|b' contains '|'",
        original=b"\xc3\x01garbage",
        original_key=b"s|a|b",
        source_topic="inventory.deltas",
        source_partition=3,
        source_offset=12345,
        source_timestamp=NOW,
        now_ms=NOW + 5,
        supplier_id="s",
        event_id="e-1",
        context={"file": "drop.csv", "row": "17"},
    )
    assert record["reason"] == "bad_sku"
    assert record["original"] == b"\xc3\x01garbage"
    assert record["failed_at"] == NOW + 5
    assert record["context"] == {"file": "drop.csv", "row": "17"}
    codec = codec_for("DeadLetter")
    assert codec.decode(codec.encode(record)) == record


def test_dead_letter_defaults_and_untrusted_text() -> None:
    record = v.dead_letter(
        reason=v.DECODE_ERROR,
        message="bad marker",
        original=b"",
        original_key=None,
        source_topic="inventory.deltas",
        source_partition=0,
        source_offset=0,
        source_timestamp=None,
        now_ms=NOW,
        supplier_id="s\ud800" * 1000,
        event_id="e",
    )
    assert record["original_key"] is None
    assert record["context"] == {}
    assert len(record["supplier_id"]) <= 256
    codec = codec_for("DeadLetter")
    assert codec.decode(codec.encode(record)) == record


def huge_delta_bytes(sku_bytes: int) -> bytes:
    """A SupplierDelta whose SKU alone is sku_bytes long (valid Avro, invalid SKU)."""
    record = {
        "supplier_id": "acme-1", "sku": "S" * sku_bytes, "event_id": "e", "sequence": 1,
        "kind": "SNAPSHOT", "quantity": 1, "observed_at": NOW, "price": None, "currency": None,
        "warehouse": None, "lead_time_days": None, "status": "ACTIVE", "connector": "rest",
        "received_at": NOW,
    }
    return codec_for("SupplierDelta").encode(record)


def test_oversized_original_is_cut_never_dropped() -> None:
    # The case: a 350 KiB SKU and a 520 KB key made a dead letter over Kafka's
    # 1,000,000-byte send limit; the send failed and the record was committed past.
    original = huge_delta_bytes(350 * 1024)
    key = b"acme-1|" + b"K" * 520_000
    with pytest.raises(ValidationError) as info:
        v.validate_delta(codec_for("SupplierDelta").decode(original), key=key, now_ms=NOW)
    assert info.value.code == v.BAD_SKU
    record = v.dead_letter(
        reason=info.value.code, message=info.value.message, original=original,
        original_key=key, source_topic="inventory.deltas", source_partition=1,
        source_offset=7, source_timestamp=NOW, now_ms=NOW, supplier_id="acme-1", event_id="e",
    )
    encoded = codec_for("DeadLetter").encode(record)
    assert len(encoded) < 1_000_000
    assert len(encoded) <= v.DEAD_LETTER_MAX_BYTES
    assert record["original"] == original[: v.DEAD_LETTER_ORIGINAL_MAX_BYTES]
    assert record["original_key"] == key[: v.DEAD_LETTER_KEY_MAX_BYTES]
    assert record["context"] == {
        "original_truncated": "true", "original_size": str(len(original)),
        "original_key_truncated": "true", "original_key_size": str(len(key)),
    }
    # The Kafka key of the dead letter is cut the same way: key + value fit one send.
    dl_key = v.dead_letter_key(key)
    assert dl_key == record["original_key"]
    assert len(dl_key or b"") + len(encoded) < 1_000_000
    assert v.dead_letter_key(None) is None


def test_original_at_the_bound_is_kept_whole() -> None:
    original = b"x" * v.DEAD_LETTER_ORIGINAL_MAX_BYTES
    key = b"k" * v.DEAD_LETTER_KEY_MAX_BYTES
    record = v.dead_letter(
        reason=v.DECODE_ERROR, message="m", original=original, original_key=key,
        source_topic="t", source_partition=0, source_offset=0, source_timestamp=None, now_ms=NOW,
    )
    assert record["original"] == original and record["original_key"] == key
    assert record["context"] == {}


def test_dead_letter_worst_case_is_bounded() -> None:
    wide = "\U0001f4e6"  # 4 bytes in UTF-8: the most a character costs
    long_value = wide * 100_000
    record = v.dead_letter(
        reason=wide * 1_000_000, message=wide * 1_000_000, original=b"\xff" * 2_000_000,
        original_key=b"\xff" * 2_000_000, source_topic=wide * 10_000,
        source_partition=2**31 - 1, source_offset=2**63 - 1, source_timestamp=2**63 - 1,
        now_ms=2**63 - 1, supplier_id=wide * 1_000_000, event_id="\ud800" * 1_000_000,
        context={str(i) + wide * 1000: long_value for i in range(10_000)},
    )
    encoded = codec_for("DeadLetter").encode(record)
    assert len(encoded) <= v.DEAD_LETTER_MAX_BYTES
    assert record["context"]["context_dropped"] == str(10_000 - 16)
    assert codec_for("DeadLetter").decode(encoded) == record


def test_best_effort_ids() -> None:
    assert v.best_effort_ids({"supplier_id": "s", "event_id": "e"}) == ("s", "e")
    assert v.best_effort_ids({"supplier_id": 5}) == (None, None)
    assert v.best_effort_ids(b"raw") == (None, None)
