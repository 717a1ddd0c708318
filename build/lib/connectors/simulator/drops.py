"""The simulator's CSV drops: full snapshot files written into a supplier's folder."""

from __future__ import annotations

import asyncio
import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .catalog import Item, SimulatedSupplier, now_ms
from .faults import FaultInjector


class CsvStyle(BaseModel):
    """How a supplier writes its files: encoding, BOM, delimiter, header spelling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoding: str = "utf-8"
    bom: bool = False
    delimiter: str = ","
    header: dict[str, str] = Field(default_factory=lambda: {
        "sku": "SKU", "quantity": " Qty On Hand ", "price": "Unit Price",
        "currency": "Currency", "status": "Status", "description": "Description",
    })
    keep_files: int = Field(default=3, ge=1)


@dataclass(frozen=True)
class Drop:
    path: Path
    truth: dict[str, dict[str, Any]]


def _cells(item: Item, columns: list[str]) -> list[str]:
    values = {"sku": item.sku, "quantity": str(item.quantity), "price": item.price,
              "currency": item.currency, "status": item.status,
              "description": item.description}
    return [values[c] for c in columns]


def _junk(n: int, columns: list[str]) -> list[str]:
    kind = n % 3
    if kind == 0:  # too few columns
        return [f"JUNK-{n}"]
    row = {"sku": f"JUNK-{n}", "quantity": "n/a", "price": "1.00", "currency": "EUR",
           "status": "active", "description": "junk"}
    if kind == 1:
        row["sku"] = f"JUNK|{n}"
        row["quantity"] = "1"
    return [row[c] for c in columns]


class CsvDropWriter:
    """Writes the supplier's full current state as `stock_<supplier>_<ms>.csv`.

    Files appear atomically (written as `.part`, then renamed) unless the partial-file fault
    hits: then the final name is written in pieces with pauses, as a slow upload would be.
    `last_truth` is what the latest complete file says: the state a CSV connector can know.
    """

    def __init__(self, supplier: SimulatedSupplier, directory: Path,
                 faults: FaultInjector | None = None, style: CsvStyle | None = None) -> None:
        self.supplier = supplier
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.faults = faults or FaultInjector()
        self.style = style or CsvStyle()
        self.last_truth: dict[str, dict[str, Any]] = {}
        self.drops: list[Drop] = []

    def render(self) -> tuple[bytes, dict[str, dict[str, Any]]]:
        columns = list(self.style.header)
        items = list(self.supplier.items.values())
        truth = self.supplier.truth()
        rows: list[list[str]] = self.faults.mangle(
            [_cells(i, columns) for i in items], lambda n: _junk(n, columns))
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=self.style.delimiter, quoting=csv.QUOTE_MINIMAL,
                            lineterminator="\r\n")
        writer.writerow([self.style.header[c] for c in columns])
        writer.writerows(rows)
        data = buf.getvalue().encode(self.style.encoding, errors="replace")
        if self.style.bom and self.style.encoding.replace("-", "").lower() == "utf8":
            data = b"\xef\xbb\xbf" + data
        return data, truth

    async def drop(self, *, partial: bool | None = None, pause_s: float | None = None) -> Drop:
        """Write one snapshot file; returns once it is complete."""
        data, truth = self.render()
        path = self.directory / f"stock_{self.supplier.supplier_id}_{now_ms()}.csv"
        slow = self.faults.partial_file() if partial is None else partial
        if slow:
            pause = self.faults.config.partial_pause_s if pause_s is None else pause_s
            half = len(data) // 2
            with path.open("wb") as fh:
                fh.write(data[:half])
                fh.flush()
                await asyncio.sleep(pause)
                fh.write(data[half:])
        else:
            tmp = path.with_name(path.name + ".part")
            await asyncio.to_thread(tmp.write_bytes, data)
            os.replace(tmp, path)
        drop = Drop(path, truth)
        self.drops.append(drop)
        self.last_truth = truth
        self._prune()
        return drop

    def _prune(self) -> None:
        for old in self.drops[:-self.style.keep_files]:
            old.path.unlink(missing_ok=True)
        self.drops = self.drops[-self.style.keep_files:]
