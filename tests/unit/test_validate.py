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


def rejects(delta: dict[str, Any], *, key: bytes | None = None, now_ms: int = NOW) -> str:
    with pytest.raises(ValidationError) as info:
        v.validate_delta(delta, key=key, now_ms=now_ms)
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
    out = v.validate_delta(minimal, key=None, now_ms=NOW)
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
    assert v.validate_delta(make_delta(supplier_id=supplier_id), key=None, now_ms=NOW)


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
    out = v.validate_delta(make_delta(event_id="e|1 'x' ü" + "e" * 119), key=None, now_ms=NOW)
    assert len(out["event_id"]) == 128


@pytest.mark.parametrize("sequence", [0, -1, 2**63])
def test_sequence_rejected(make_delta: Callable[..., dict[str, Any]], sequence: int) -> None:
    assert rejects(make_delta(sequence=sequence)) == v.BAD_SEQUENCE


@pytest.mark.parametrize("sequence", [1, 10**12, 2**63 - 1])
def test_sequence_accepted(make_delta: Callable[..., dict[str, Any]], sequence: int) -> None:
    assert v.validate_delta(make_delta(sequence=sequence), key=None, now_ms=NOW)


def test_snapshot_quantity_bounds(make_delta: Callable[..., dict[str, Any]]) -> None:
    limit = v.DEFAULT_LIMITS.max_quantity
    assert v.validate_delta(make_delta(quantity=0), key=None, now_ms=NOW)
    assert v.validate_delta(make_delta(quantity=limit), key=None, now_ms=NOW)
    assert rejects(make_delta(quantity=-1)) == v.NEGATIVE_SNAPSHOT
    assert rejects(make_delta(quantity=limit + 1)) == v.QUANTITY_OUT_OF_RANGE


def test_adjustment_quantity_bounds(make_delta: Callable[..., dict[str, Any]]) -> None:
    limit = v.DEFAULT_LIMITS.max_quantity
    for quantity in (-limit, -1, 0, limit):
        delta = make_delta(kind="ADJUSTMENT", quantity=quantity)
        assert v.validate_delta(delta, key=None, now_ms=NOW)["quantity"] == quantity
    assert rejects(make_delta(kind="ADJUSTMENT", quantity=limit + 1)) == v.QUANTITY_OUT_OF_RANGE
    assert rejects(make_delta(kind="ADJUSTMENT", quantity=-limit - 1)) == v.QUANTITY_OUT_OF_RANGE


def test_limits_are_configurable(make_delta: Callable[..., dict[str, Any]]) -> None:
    tight = v.ValidationLimits(max_quantity=5)
    with pytest.raises(ValidationError) as info:
        v.validate_delta(make_delta(quantity=6), key=None, now_ms=NOW, limits=tight)
    assert info.value.code == v.QUANTITY_OUT_OF_RANGE
    with pytest.raises(AttributeError):
        tight.max_quantity = 7  # type: ignore[misc]


@pytest.mark.parametrize("field", ["observed_at", "received_at"])
def test_timestamp_window(make_delta: Callable[..., dict[str, Any]], field: str) -> None:
    limits = v.DEFAULT_LIMITS
    assert v.validate_delta(make_delta(**{field: NOW + limits.max_future_ms}), key=None, now_ms=NOW)
    assert v.validate_delta(make_delta(**{field: limits.min_observed_at_ms}), key=None, now_ms=NOW)
    future = make_delta(**{field: NOW + limits.max_future_ms + 1})
    assert rejects(future) == v.TIMESTAMP_IN_FUTURE
    assert rejects(make_delta(**{field: limits.min_observed_at_ms - 1})) == v.TIMESTAMP_TOO_OLD
    # Seconds instead of milliseconds is a classic producer bug: far too old.
    assert rejects(make_delta(**{field: NOW // 1000})) == v.TIMESTAMP_TOO_OLD


def test_future_rule_follows_the_given_clock(make_delta: Callable[..., dict[str, Any]]) -> None:
    delta = make_delta(observed_at=NOW + 3_600_000)
    assert rejects(delta) == v.TIMESTAMP_IN_FUTURE
    assert v.validate_delta(delta, key=None, now_ms=NOW + 3_600_000)


@pytest.mark.parametrize(
    "price", [None, "0", "12", "12.5", "12.5000", "999999999.9999", "1000000000"]
)
def test_price_accepted(make_delta: Callable[..., dict[str, Any]], price: str | None) -> None:
    assert v.validate_delta(make_delta(price=price), key=None, now_ms=NOW)["price"] == price


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


@pytest.mark.parametrize("currency", ["eur", "EU", "EURO", "E1R", "ÉUR", "EUR\n", 978])
def test_currency_rejected(make_delta: Callable[..., dict[str, Any]], currency: object) -> None:
    assert rejects(make_delta(currency=currency)) == v.BAD_CURRENCY


def test_currency_optional(make_delta: Callable[..., dict[str, Any]]) -> None:
    assert v.validate_delta(make_delta(currency=None), key=None, now_ms=NOW)["currency"] is None


@pytest.mark.parametrize("lead_time", [-1, 366, True, 1.5, "3"])
def test_lead_time_rejected(make_delta: Callable[..., dict[str, Any]], lead_time: object) -> None:
    assert rejects(make_delta(lead_time_days=lead_time)) == v.BAD_LEAD_TIME


@pytest.mark.parametrize("lead_time", [None, 0, 365])
def test_lead_time_accepted(
    make_delta: Callable[..., dict[str, Any]], lead_time: int | None
) -> None:
    out = v.validate_delta(make_delta(lead_time_days=lead_time), key=None, now_ms=NOW)
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
    assert v.validate_delta(delta, key=None, now_ms=NOW)  # no key: nothing to compare


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
        v.validate_delta(make_delta(sku="x\ud800" * 10_000), key=None, now_ms=NOW)
    assert len(info.value.message) < 400
    info.value.message.encode("utf-8")  # no lone surrogate leaks into the message


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text() | st.booleans()))
def test_any_json_object_is_accepted_or_rejected_with_a_reason(record: dict[str, Any]) -> None:
    try:
        out = v.validate_delta(record, key=None, now_ms=NOW)
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


def test_best_effort_ids() -> None:
    assert v.best_effort_ids({"supplier_id": "s", "event_id": "e"}) == ("s", "e")
    assert v.best_effort_ids({"supplier_id": 5}) == (None, None)
    assert v.best_effort_ids(b"raw") == (None, None)
