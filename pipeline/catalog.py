"""The catalog: which platform SKU a supplier's SKU is sold as (identity when unmapped).

File formats (chosen by extension):

- CSV (`.csv`): rows `supplier_id,sku,platform_sku`; an optional header row with exactly
  those names; blank lines and lines starting with `#` are skipped.
- YAML (`.yaml`/`.yml`): either a list of `{supplier_id, sku, platform_sku}` mappings or a
  mapping `supplier_id -> {sku: platform_sku}`.

Every id follows the SupplierDelta rules (a platform SKU follows the SKU rules). Within one
supplier the mapping must be one-to-one: the availability table has one entry per supplier
and platform SKU, so two SKUs of one supplier may not share a platform SKU. Any error raises
ConfigurationError naming the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from pipeline.errors import ConfigurationError
from pipeline.validate import is_valid_sku, is_valid_supplier_id

_HEADER = ("supplier_id", "sku", "platform_sku")

# (supplier_id, sku, platform_sku, line number)
_Row = tuple[str, str, str, int]


class Catalog:
    """Maps (supplier_id, supplier sku) to a platform SKU; the supplier's sku when unmapped."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Mapping[tuple[str, str], str] | None = None) -> None:
        self._mapping: dict[tuple[str, str], str] = dict(mapping or {})

    @classmethod
    def empty(cls) -> Catalog:
        """A catalog that maps every SKU to itself."""
        return cls()

    @classmethod
    def from_file(cls, path: str | Path) -> Catalog:
        """Read a CSV or YAML catalog; ConfigurationError names the line of the first problem."""
        path = Path(path)
        suffix = path.suffix.lower()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"catalog {path}: cannot read: {exc}") from exc
        if suffix == ".csv":
            rows = list(_csv_rows(path, text))
        elif suffix in (".yaml", ".yml"):
            rows = list(_yaml_rows(path, text))
        else:
            raise ConfigurationError(
                f"catalog {path}: unknown format {suffix!r}, expected .csv, .yaml or .yml"
            )
        return cls(_checked_mapping(path, rows))

    def platform_sku(self, supplier_id: str, sku: str) -> str:
        """The platform SKU of a supplier's SKU."""
        return self._mapping.get((supplier_id, sku), sku)

    def __len__(self) -> int:
        return len(self._mapping)

    def items(self) -> Iterator[tuple[tuple[str, str], str]]:
        """The explicit mappings ((supplier_id, sku), platform_sku)."""
        return iter(self._mapping.items())


def _checked_mapping(path: Path, rows: list[_Row]) -> dict[tuple[str, str], str]:
    mapping: dict[tuple[str, str], str] = {}
    line_of: dict[tuple[str, str], int] = {}
    target_of: dict[tuple[str, str], tuple[str, int]] = {}  # (supplier, platform) -> (sku, line)
    for supplier_id, sku, platform_sku, line in rows:
        where = f"catalog {path} line {line}"
        if not is_valid_supplier_id(supplier_id):
            raise ConfigurationError(f"{where}: bad supplier_id {supplier_id!r}")
        if not is_valid_sku(sku):
            raise ConfigurationError(f"{where}: bad sku {sku!r}")
        if not is_valid_sku(platform_sku):
            raise ConfigurationError(f"{where}: bad platform_sku {platform_sku!r}")
        key = (supplier_id, sku)
        if key in mapping:
            raise ConfigurationError(
                f"{where}: ({supplier_id!r}, {sku!r}) is already mapped on line {line_of[key]}"
            )
        other = target_of.get((supplier_id, platform_sku))
        if other is not None:
            raise ConfigurationError(
                f"{where}: supplier {supplier_id!r} maps both {other[0]!r} (line {other[1]}) "
                f"and {sku!r} to platform_sku {platform_sku!r}"
            )
        mapping[key] = platform_sku
        line_of[key] = line
        target_of[(supplier_id, platform_sku)] = (sku, line)
    return mapping


def _csv_rows(path: Path, text: str) -> Iterator[_Row]:
    reader = csv.reader(text.splitlines())
    first = True
    for fields in reader:
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if fields[0].lstrip().startswith("#"):
            continue
        cells = tuple(f.strip() for f in fields)
        if first and cells == _HEADER:
            first = False
            continue
        first = False
        if len(cells) != 3:
            raise ConfigurationError(
                f"catalog {path} line {line}: expected 3 columns supplier_id,sku,platform_sku, "
                f"got {len(cells)}"
            )
        yield cells[0], cells[1], cells[2], line


def _scalar(path: Path, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        raise ConfigurationError(
            f"catalog {path} line {node.start_mark.line + 1}: {what} must be a plain value"
        )
    # The raw scalar text: SKUs like 00123 or "true" stay strings.
    return str(node.value)


def _yaml_rows(path: Path, text: str) -> Iterator[_Row]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"catalog {path}: invalid YAML: {exc}") from exc
    if root is None:
        return
    if isinstance(root, yaml.SequenceNode):
        for item in root.value:
            line = item.start_mark.line + 1
            if not isinstance(item, yaml.MappingNode):
                raise ConfigurationError(
                    f"catalog {path} line {line}: expected a mapping with {', '.join(_HEADER)}"
                )
            fields = {_scalar(path, k, "a key"): v for k, v in item.value}
            if set(fields) != set(_HEADER):
                raise ConfigurationError(
                    f"catalog {path} line {line}: expected exactly the keys {', '.join(_HEADER)}, "
                    f"got {', '.join(sorted(fields))}"
                )
            yield (
                _scalar(path, fields["supplier_id"], "supplier_id"),
                _scalar(path, fields["sku"], "sku"),
                _scalar(path, fields["platform_sku"], "platform_sku"),
                line,
            )
    elif isinstance(root, yaml.MappingNode):
        for supplier_node, skus_node in root.value:
            supplier_id = _scalar(path, supplier_node, "a supplier_id")
            if not isinstance(skus_node, yaml.MappingNode):
                raise ConfigurationError(
                    f"catalog {path} line {skus_node.start_mark.line + 1}: supplier "
                    f"{supplier_id!r} must map sku -> platform_sku"
                )
            for sku_node, platform_node in skus_node.value:
                yield (
                    supplier_id,
                    _scalar(path, sku_node, "sku"),
                    _scalar(path, platform_node, "platform_sku"),
                    sku_node.start_mark.line + 1,
                )
    else:
        raise ConfigurationError(
            f"catalog {path} line {root.start_mark.line + 1}: expected a list or a mapping"
        )
