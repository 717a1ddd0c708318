"""CSV snapshot files diffed into deltas, from a local folder into a memory emitter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectors.sources.base import FieldMapping, RecordMapper
from connectors.sources.csv_drop import CsvDropSource, CsvOptions
from connectors.sources.cursor_store import CursorStore
from connectors.sources.drop_folders import LocalFolder
from connectors.sources.emitters import MemoryEmitter

MAPPING = FieldMapping({"sku": ["sku", "item"], "quantity": ["qty on hand", "qty"],
                        "price": ["unit price"], "status": ["status"]})


@pytest.fixture
def drops(tmp_path: Path) -> Path:
    path = tmp_path / "drops"
    path.mkdir()
    return path


def source(drops: Path, tmp_path: Path, emitter: MemoryEmitter, **options: object) -> CsvDropSource:
    return CsvDropSource("crate", connector="ftp", folder=LocalFolder(drops),
                         mapper=RecordMapper("crate", "ftp", MAPPING), emitter=emitter,
                         store=CursorStore(tmp_path / "state.sqlite"),
                         options=CsvOptions(stable_s=0, **options))  # type: ignore[arg-type]


def write(drops: Path, name: str, data: bytes, mtime: float) -> None:
    (drops / name).write_bytes(data)
    os.utime(drops / name, (mtime, mtime))


async def settle(src: CsvDropSource) -> int:
    """Two polls: the first sees a file, the second finds it unchanged and reads it."""
    return await src.poll_once() + await src.poll_once()


async def test_only_changed_rows_become_deltas_and_gone_skus_go_to_zero(
        drops: Path, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    # One SKU of three leaving is above the default missing ratio (a cut file); allowed here.
    src = source(drops, tmp_path, emitter, max_missing_ratio=0.5)
    write(drops, "s1.csv", b"SKU,Qty On Hand,Unit Price\nA,5,1.00\nB,7,2.00\nC,1,3.00\n", 1000)
    assert await settle(src) == 3
    write(drops, "s2.csv", b"sku,qty on hand,unit price\nA,5,1.00\nB,8,2.00\n", 2000)
    assert await settle(src) == 2
    second = {d["sku"]: d for d in emitter.deltas[3:]}
    assert {s: d["quantity"] for s, d in second.items()} == {"B": 8, "C": 0}
    assert {d["sequence"] for d in second.values()} == {2000 * 1_000_000}
    assert await settle(src) == 0  # nothing new: nothing emitted


async def test_quoting_bom_latin_1_and_header_variations_are_read(
        drops: Path, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    src = source(drops, tmp_path, emitter, delimiter=";")
    text = '\ufeff ITEM ;"Qty-On-Hand";Description\n"A;1";3;"Café ""XL"", large"\n'
    write(drops, "s1.csv", text.encode("utf-8"), 1000)
    write(drops, "s0.csv", "item;qty\nÜ-1;4\n".encode("latin-1"), 900)
    await settle(src)
    assert [(d["sku"], d["quantity"]) for d in emitter.deltas] == [("A;1", 3)]
    assert emitter.dead_letters == []


async def test_bad_rows_are_dead_lettered_with_file_and_row(drops: Path,
                                                            tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    src = source(drops, tmp_path, emitter)
    write(drops, "s1.csv", b"sku,qty\nA,1\nB\n\nC|x,2\nD,many\nA,1\nA,2\nE,3\n", 1000)
    await settle(src)
    assert sorted(d["sku"] for d in emitter.deltas) == ["A", "E"]
    got = {(d["reason"], d["context"]["row"]) for d in emitter.dead_letters}
    assert got == {("bad_row", "3"), ("bad_sku", "5"), ("bad_quantity", "6"),
                   ("duplicate_sku", "8")}
    assert all(d["context"]["file"] == "s1.csv" for d in emitter.dead_letters)
    # A SKU whose row was bad keeps its last known value instead of dropping to zero.
    write(drops, "s2.csv", b"sku,qty\nA,1\nE,3\nD,?\n", 2000)
    await settle(src)
    assert all(d["sku"] != "D" for d in emitter.deltas)


async def test_files_being_uploaded_or_shrinking_snapshots_are_held(
        drops: Path, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    src = source(drops, tmp_path, emitter)
    write(drops, "s1.csv.part", b"sku,qty\nA,1\n", 1000)
    assert await settle(src) == 0
    rows = b"".join(f"S{i},{i + 1}\n".encode() for i in range(10))
    write(drops, "s1.csv", b"sku,qty\n" + rows, 1000)
    assert await settle(src) == 10
    write(drops, "s2.csv", b"sku,qty\nS1,2\nS2,3\n", 2000)  # 8 of 10 SKUs missing
    assert await settle(src) == 0
    assert emitter.dead_letters[-1]["reason"] == "suspect_snapshot"


async def test_a_header_without_sku_or_quantity_dead_letters_the_file(
        drops: Path, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    src = source(drops, tmp_path, emitter)
    write(drops, "s1.csv", b"name,colour\nx,y\n", 1000)
    await settle(src)
    assert [(d["reason"], d["context"]["row"]) for d in emitter.dead_letters] == \
        [("bad_header", "1")]
