"""The suppliers YAML: validated up front, errors naming the line, secrets by variable name."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.simulator.config import load_simulator_config
from connectors.suppliers import SecretRef, load_suppliers, parse_suppliers
from pipeline.errors import ConfigurationError

EXAMPLE = Path(__file__).parents[3] / "examples" / "suppliers.yaml"

GOOD = """\
suppliers:
  - id: acme
    kind: rest
    endpoint: http://127.0.0.1:8701/v1/suppliers/acme/inventory
    mapping: {sku: item_code, quantity: qty, observed_at: updated_at}
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        parse_suppliers(text, "suppliers.yaml")
    return str(caught.value)


def test_the_demo_file_is_valid_for_connectors_and_simulator() -> None:
    parsed = load_suppliers(EXAMPLE)
    assert {s.kind for s in parsed.suppliers} == {"rest", "webhook", "ftp", "sftp", "graphql"}
    sim = load_simulator_config(EXAMPLE)
    assert {s.id for s in sim.suppliers} == {s.id for s in parsed.suppliers}


def test_an_unknown_kind_names_its_line() -> None:
    assert error_of(GOOD.replace("kind: rest", "kind: soap")).startswith(
        "suppliers.yaml:3: suppliers[0].kind:")


def test_a_bad_value_names_its_line_and_field() -> None:
    text = GOOD + "    rate_limit: {per_second: 0}\n"
    assert error_of(text).startswith("suppliers.yaml:6: suppliers[0].rate_limit.per_second:")


def test_a_missing_field_names_the_supplier_line() -> None:
    message = error_of(GOOD.replace("    endpoint: http://127.0.0.1:8701/v1/suppliers/acme/"
                                    "inventory\n", ""))
    assert "suppliers.yaml:2: suppliers[0].endpoint: Field required" in message


def test_an_unknown_key_is_refused() -> None:
    assert "suppliers.yaml:6: suppliers[0].colour" in error_of(GOOD + "    colour: blue\n")


def test_a_rest_feed_needs_the_updated_since_field() -> None:
    message = error_of(GOOD.replace(", observed_at: updated_at", ""))
    assert "suppliers.yaml:2" in message and "observed_at" in message


def test_duplicate_supplier_ids_name_the_second_one() -> None:
    text = GOOD + GOOD.removeprefix("suppliers:\n")
    assert error_of(text).startswith("suppliers.yaml:6: suppliers[1].id: duplicate")


def test_broken_yaml_names_its_line() -> None:
    assert error_of(GOOD + "  - id: [unclosed\n").startswith("suppliers.yaml:7: not valid YAML")


def test_secrets_come_from_the_named_variable_and_defaults_only_in_development() -> None:
    ref = SecretRef(env="ACME_TOKEN", default="demo")
    assert ref.resolve({"ACME_TOKEN": "real"}) == "real"
    assert ref.resolve({}, environment="development") == "demo"
    with pytest.raises(ConfigurationError, match="ACME_TOKEN is not set"):
        ref.resolve({}, environment="production")
