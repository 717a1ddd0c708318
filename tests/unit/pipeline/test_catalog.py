"""Unit tests of the supplier-SKU to platform-SKU catalog and its file formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.catalog import Catalog, CatalogError
from pipeline.errors import ConfigurationError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_catalog_is_identity() -> None:
    catalog = Catalog.empty()
    assert catalog.platform_sku("s1", "SKU-1") == "SKU-1"
    assert len(catalog) == 0


def test_csv_with_header_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "catalog.csv",
        "supplier_id,sku,platform_sku\n"
        "# acme sells our P-1\n"
        "acme,A-1,P-1\n"
        "\n"
        'beta,"B ""quoted"", 1",P-1\n'
        "beta,Größe 42,P-42\n",
    )
    catalog = Catalog.from_file(path)
    assert len(catalog) == 3
    assert catalog.platform_sku("acme", "A-1") == "P-1"
    assert catalog.platform_sku("beta", 'B "quoted", 1') == "P-1"
    assert catalog.platform_sku("beta", "Größe 42") == "P-42"
    assert catalog.platform_sku("acme", "unmapped") == "unmapped"
    assert catalog.platform_sku("beta", "A-1") == "A-1"  # the mapping is per supplier
    assert dict(catalog.items())[("acme", "A-1")] == "P-1"


def test_csv_without_header_and_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffacme, A-1 ,P-1\r\n".encode())
    assert Catalog.from_file(path).platform_sku("acme", "A-1") == "P-1"


def test_yaml_list_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "catalog.yaml",
        "- {supplier_id: acme, sku: A-1, platform_sku: P-1}\n"
        "- supplier_id: beta\n"
        "  sku: 00123\n"
        "  platform_sku: P-1\n",
    )
    catalog = Catalog.from_file(path)
    assert catalog.platform_sku("acme", "A-1") == "P-1"
    assert catalog.platform_sku("beta", "00123") == "P-1"  # kept as text, not 123


def test_yaml_mapping_form(tmp_path: Path) -> None:
    path = write(tmp_path, "catalog.yml", "acme:\n  A-1: P-1\n  A-2: P-2\nbeta:\n  B-1: P-1\n")
    catalog = Catalog.from_file(path)
    assert [catalog.platform_sku(*k) for k in [("acme", "A-2"), ("beta", "B-1")]] == ["P-2", "P-1"]


def test_empty_files(tmp_path: Path) -> None:
    assert len(Catalog.from_file(write(tmp_path, "e.csv", ""))) == 0
    assert len(Catalog.from_file(write(tmp_path, "e.yaml", ""))) == 0


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("acme,A-1,P-1\nacme,A-2\n", 2, "3 columns"),
        ("acme,A-1,P-1\nbad id,A-2,P-2\n", 2, "supplier_id"),
        ("acme,A|1,P-1\n", 1, "bad sku"),
        ("acme,A-1,P\x01\n", 1, "platform_sku"),
        ("acme,A-1,\n", 1, "platform_sku"),
        ("acme,A-1,P-1\n\nacme,A-1,P-2\n", 3, "already mapped on line 1"),
        ("acme,A-1,P-1\nacme,A-2,P-1\n", 2, "maps both"),
    ],
)
def test_bad_csv_names_the_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ConfigurationError) as info:
        Catalog.from_file(path)
    assert f"line {line}" in str(info.value)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "- {supplier_id: acme, sku: A-1, platform_sku: P-1}\n- {supplier_id: acme, sku: A-1}\n",
            2,
        ),
        ("- {supplier_id: acme, sku: A-1, platform_sku: P-1}\n- just text\n", 2),
        ("acme:\n  A-1: P-1\n  A-2: P-1\n", 3),
        ("acme:\n  A-1: [P-1]\n", 2),
        ("acme:\n  A-1: ~\n", 2),
        ("acme: P-1\n", 1),
        ("just a string\n", 1),
        ("acme:\n  A-1: P-1\n  'A|2': P-2\n", 3),
    ],
)
def test_bad_yaml_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(ConfigurationError) as info:
        Catalog.from_file(write(tmp_path, "bad.yaml", text))
    assert f"line {line}" in str(info.value)


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Catalog.from_file(write(tmp_path, "bad.yaml", "acme: [unclosed\n"))
    assert "invalid YAML" in str(info.value) and "line" in str(info.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        Catalog.from_file(tmp_path / "missing.csv")
    with pytest.raises(ConfigurationError, match="unknown format"):
        Catalog.from_file(write(tmp_path, "catalog.json", "{}"))


def test_every_catalog_problem_is_a_catalog_error(tmp_path: Path) -> None:
    assert issubclass(CatalogError, ConfigurationError)
    with pytest.raises(CatalogError, match="maps both 'A-1' \\(line 1\\) and 'A-2'"):
        Catalog.from_file(write(tmp_path, "c.csv", "acme,A-1,P-1\nacme,A-2,P-1\n"))
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.from_file(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="maps both"):
        Catalog({("acme", "A-1"): "P-1", ("acme", "A-2"): "P-1"})


def test_unmapped_sku_named_like_its_suppliers_target_does_not_merge() -> None:
    # acme sells platform product P-1 as A-1, and also has a SKU of its own called P-1. As
    # itself it would land in P-1's availability entry for acme, overwriting A-1's stock.
    catalog = Catalog({("acme", "A-1"): "P-1", ("acme", "X"): "X", ("beta", "B-7"): "P-1"})
    assert catalog.platform_sku("acme", "A-1") == "P-1"
    assert catalog.platform_sku("acme", "P-1") == "acme|P-1"
    assert catalog.platform_sku("beta", "P-1") == "beta|P-1"
    # Other suppliers' unmapped P-1 adds up with the mapped product, as unmapped SKUs always do.
    assert catalog.platform_sku("gamma", "P-1") == "P-1"
    assert catalog.platform_sku("acme", "X") == "X"  # an identity row reserves nothing
    assert catalog.platform_sku("acme", "Y") == "Y"
    # A row for acme's own P-1 gives it a real platform SKU.
    remapped = Catalog({("acme", "A-1"): "P-1", ("acme", "P-1"): "P-9"})
    assert remapped.platform_sku("acme", "P-1") == "P-9"


_NAMES = st.sampled_from(["A", "B", "C", "P1", "P2"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from(["s1", "s2"]), _NAMES), _NAMES, max_size=8),
       st.lists(_NAMES, min_size=1, max_size=5, unique=True))
def test_no_two_skus_of_one_supplier_share_a_platform_sku(
    mapping: dict[tuple[str, str], str], skus: list[str]
) -> None:
    try:
        catalog = Catalog(mapping)
    except CatalogError:
        return  # two mappings of one supplier onto one platform SKU: refused at load
    for supplier_id in ("s1", "s2"):
        platform = [catalog.platform_sku(supplier_id, sku) for sku in skus]
        assert len(set(platform)) == len(platform), (supplier_id, skus, platform)
