"""The catalog: which platform SKU a supplier's SKU is sold as (identity when unmapped).

File formats (chosen by extension):

- CSV (`.csv`): rows `supplier_id,sku,platform_sku`; an optional header row with exactly
  those names; blank lines and lines starting with `#` are skipped.
- YAML (`.yaml`/`.yml`): either a list of `{supplier_id, sku, platform_sku}` mappings or a
  mapping `supplier_id -> {sku: platform_sku}`.

Every id follows the SupplierDelta rules (a platform SKU follows the SKU rules).

Collisions. The availability of a platform SKU has one entry per supplier, so two SKUs of one
supplier must never reach the same platform SKU: their entries would overwrite each other and
their versions (counted per supplier SKU) are not comparable, so Cassandra and Redis end up
disagreeing. Hence, per supplier:

1. Two mappings may not share a platform SKU: CatalogError at load, naming the file and lines.
2. An unmapped SKU maps to itself, except when its name is the platform SKU of one of the
   same supplier's mappings (acme maps A-1 to P-1 and also sends a SKU named P-1): then it
   maps to `supplier_id|sku` (acme|P-1), a name no SKU can have, so it never merges into the
   mapped product. The catalog cannot know a supplier's unmapped SKUs, so this rule is applied
   per record; a row for (acme, P-1) in the catalog gives that SKU a real platform SKU.

Across suppliers, equal platform SKUs are the point: that is how suppliers of one product add
up, mapped or not. Any error raises CatalogError (a ConfigurationError) naming the file and
line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from pipeline.errors import ConfigurationError
from pipeline.validate import KEY_SEPARATOR, is_valid_sku, is_valid_supplier_id

_HEADER = ("supplier_id", "sku", "platform_sku")

# (supplier_id, sku, platform_sku, line number)
_Row = tuple[str, str, str, int]


class CatalogError(ConfigurationError):
    """A catalog breaks a catalog rule (format, ids, collisions); the message says where."""


class Catalog:
    """Maps (supplier_id, supplier sku) to a platform SKU; the supplier's sku when unmapped."""

    __slots__ = ("_mapping", "_renamed_to")

    def __init__(self, mapping: Mapping[tuple[str, str], str] | None = None) -> None:
        self._mapping: dict[tuple[str, str], str] = dict(mapping or {})
        owner: dict[tuple[str, str], str] = {}
        for (supplier_id, sku), platform_sku in self._mapping.items():
            other = owner.setdefault((supplier_id, platform_sku), sku)
            if other != sku:
                raise CatalogError(
                    f"catalog: supplier {supplier_id!r} maps both {other!r} and {sku!r} to "
                    f"platform_sku {platform_sku!r}"
                )
        # (supplier, platform SKU) of every mapping that renames: that supplier's own SKU of
        # the same name may not map to itself (rule 2 of the module docstring).
        self._renamed_to: frozenset[tuple[str, str]] = frozenset(
            (supplier_id, platform_sku)
            for (supplier_id, sku), platform_sku in self._mapping.items()
            if platform_sku != sku
        )

    @classmethod
    def empty(cls) -> Catalog:
        """A catalog that maps every SKU to itself."""
        return cls()

    @classmethod
    def from_file(cls, path: str | Path) -> Catalog:
        """Read a CSV or YAML catalog; CatalogError names the line of the first problem."""
        path = Path(path)
        suffix = path.suffix.lower()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"catalog {path}: cannot read: {exc}") from exc
        if suffix == ".csv":
            rows = list(_csv_rows(path, text))
        elif suffix in (".yaml", ".yml"):
            rows = list(_yaml_rows(path, text))
        else:
            raise CatalogError(
                f"catalog {path}: unknown format {suffix!r}, expected .csv, .yaml or .yml"
            )
        return cls(_checked_mapping(path, rows))

    def platform_sku(self, supplier_id: str, sku: str) -> str:
        """The platform SKU of a supplier's SKU."""
        key = (supplier_id, sku)
        mapped = self._mapping.get(key)
        if mapped is not None:
            return mapped
        if key in self._renamed_to:
            return f"{supplier_id}{KEY_SEPARATOR}{sku}"
        return sku

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
            raise CatalogError(f"{where}: bad supplier_id {supplier_id!r}")
        if not is_valid_sku(sku):
            raise CatalogError(f"{where}: bad sku {sku!r}")
        if not is_valid_sku(platform_sku):
            raise CatalogError(f"{where}: bad platform_sku {platform_sku!r}")
        key = (supplier_id, sku)
        if key in mapping:
            raise CatalogError(
                f"{where}: ({supplier_id!r}, {sku!r}) is already mapped on line {line_of[key]}"
            )
        other = target_of.get((supplier_id, platform_sku))
        if other is not None:
            raise CatalogError(
                f"{where}: supplier {supplier_id!r} maps both {other[0]!r} (line {other[1]}) "
                f"and {sku!r} to platform_sku {platform_sku!r}; a supplier offers a platform "
                "SKU through one of its SKUs"
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
            raise CatalogError(
                f"catalog {path} line {line}: expected 3 columns supplier_id,sku,platform_sku, "
                f"got {len(cells)}"
            )
        yield cells[0], cells[1], cells[2], line


def _scalar(path: Path, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        raise CatalogError(
            f"catalog {path} line {node.start_mark.line + 1}: {what} must be a plain value"
        )
    # The raw scalar text: SKUs like 00123 or "true" stay strings.
    return str(node.value)


def _yaml_rows(path: Path, text: str) -> Iterator[_Row]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {path}: invalid YAML: {exc}") from exc
    if root is None:
        return
    if isinstance(root, yaml.SequenceNode):
        for item in root.value:
            line = item.start_mark.line + 1
            if not isinstance(item, yaml.MappingNode):
                raise CatalogError(
                    f"catalog {path} line {line}: expected a mapping with {', '.join(_HEADER)}"
                )
            fields = {_scalar(path, k, "a key"): v for k, v in item.value}
            if set(fields) != set(_HEADER):
                raise CatalogError(
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
                raise CatalogError(
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
        raise CatalogError(
            f"catalog {path} line {root.start_mark.line + 1}: expected a list or a mapping"
        )
