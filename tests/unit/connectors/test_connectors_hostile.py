"""Hostile supplier input, case by case: clocks, host keys, secrets, caps, files, the CLI."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from connectors.simulator.catalog import SimulatedSupplier
from connectors.simulator.file_servers import FtpDropServer, SftpDropServer
from connectors.sources.base import MAX_CLOCK_SKEW_MS, FieldMapping, RecordMapper, now_ms
from connectors.sources.csv_drop import CsvDropSource, CsvOptions
from connectors.sources.cursor_store import CursorStore
from connectors.sources.drop_folders import FtpFolder, LocalFolder, SftpFolder
from connectors.sources.emitters import MemoryEmitter
from connectors.sources.rest import RestOptions, RestSource
from connectors.sources.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookReceiver,
    WebhookSupplier,
    webhook_signature,
)
from connectors.suppliers import SecretRef, parse_suppliers
from pipeline.errors import ConfigurationError, ConnectorError
from pipeline.settings import Settings
from pipeline.shell.views import availability_table
from tests.unit.connectors.test_connectors_fuzz import ScriptedSupplier, http

MAPPING = FieldMapping({"sku": ["sku"], "quantity": ["qty"], "sequence": ["version"],
                        "observed_at": ["updated_at"]})
YEAR_2100_MS = 4_102_444_800_000


@pytest.fixture
async def supplier() -> AsyncIterator[ScriptedSupplier]:
    server = ScriptedSupplier()
    await server.start()
    yield server
    await server.stop()


# --- 3. supplier clocks -------------------------------------------------------------------

def test_a_future_timestamp_is_clamped_to_now_plus_the_stated_skew() -> None:
    received = now_ms()
    delta = RecordMapper("s", "rest", MAPPING).map(
        {"sku": "A", "qty": 1, "updated_at": YEAR_2100_MS}, received_at=received)
    assert delta["observed_at"] == received + MAX_CLOCK_SKEW_MS
    # Without a version, the sequence comes from the clamped time: no SKU stale until 2100.
    no_version = RecordMapper("s", "rest", FieldMapping({"sku": ["sku"], "quantity": ["qty"],
                                                        "observed_at": ["updated_at"]}))
    assert no_version.map({"sku": "A", "qty": 1, "updated_at": "2100-01-01T00:00:00Z"},
                          received_at=received)["sequence"] == (received + MAX_CLOCK_SKEW_MS) * 1000


async def test_an_item_dated_2100_does_not_move_the_rest_cursor_past_later_updates(
        supplier: ScriptedSupplier, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    store = CursorStore(tmp_path / "state.sqlite")
    source = RestSource("s", options=RestOptions(url=f"http://127.0.0.1:{supplier.port}/i"),
                        http=http("rest"), mapper=RecordMapper("s", "rest", MAPPING),
                        emitter=emitter, store=store)
    start = now_ms()
    supplier.push({"items": [{"sku": "A", "qty": 1, "version": 1, "updated_at": YEAR_2100_MS},
                             {"sku": "B", "qty": 1, "version": 1, "updated_at": start - 5}]})
    await source.poll_once()
    assert (store.get_cursor(source.key) or {})["updated_since"] <= now_ms()
    # The supplier keeps sending its 2100 item (updated_since < 2100); B changed since.
    supplier.push({"items": [{"sku": "A", "qty": 1, "version": 1, "updated_at": YEAR_2100_MS},
                             {"sku": "B", "qty": 2, "version": 2, "updated_at": start + 1}]})
    await source.poll_once()
    assert [(d["sku"], d["quantity"]) for d in emitter.deltas] == [("A", 1), ("B", 1), ("B", 2)]
    await source.close()


async def test_a_csv_file_dated_2100_does_not_hide_newer_files(tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    emitter = MemoryEmitter()
    source = CsvDropSource("s", connector="local", folder=LocalFolder(drops),
                           mapper=RecordMapper("s", "local", MAPPING), emitter=emitter,
                           store=CursorStore(tmp_path / "state.sqlite"),
                           options=CsvOptions(stable_s=0))
    (drops / "future.csv").write_bytes(b"sku,qty\nA,1\n")
    os.utime(drops / "future.csv", (YEAR_2100_MS / 1000, YEAR_2100_MS / 1000))
    await source.poll_once()
    await source.poll_once()
    (drops / "today.csv").write_bytes(b"sku,qty\nA,2\n")
    os.utime(drops / "today.csv", (time.time() + 1, time.time() + 1))
    await source.poll_once()
    await source.poll_once()
    assert [d["quantity"] for d in emitter.deltas] == [1, 2]
    assert all(d["observed_at"] <= now_ms() + MAX_CLOCK_SKEW_MS for d in emitter.deltas)
    await source.poll_once()  # the 2100 file is not read again
    assert len(emitter.deltas) == 2


# --- 4. SFTP host keys, 7. FTPS -----------------------------------------------------------

@pytest.fixture
async def sftp_server(tmp_path: Path) -> AsyncIterator[int]:
    (tmp_path / "sftp" / "u").mkdir(parents=True)
    (tmp_path / "sftp" / "u" / "s.csv").write_bytes(b"sku,qty\nA,1\n")
    server = SftpDropServer(tmp_path / "sftp", {"u": "the-password"})
    port = await server.start("127.0.0.1", 0)
    yield port
    await server.stop()


async def test_sftp_refuses_an_unknown_host_key_unless_the_config_opts_out(
        sftp_server: int, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")  # trusts nothing, as for an impostor's key
    for folder in (SftpFolder("127.0.0.1", sftp_server, user="u", password="the-password",
                              known_hosts=known_hosts),
                   # No known_hosts: the user's default file, never "trust anything".
                   SftpFolder("127.0.0.1", sftp_server, user="u", password="the-password")):
        with pytest.raises(ConnectorError, match="host key"):
            await folder.list()
        await folder.close()
    trusting = SftpFolder("127.0.0.1", sftp_server, user="u", password="the-password",
                          verify_host_key=False)
    assert [f.name for f in await trusting.list()] == ["s.csv"]
    await trusting.close()
    assert "the-password" not in repr(trusting)


def test_ftp_is_ftps_by_default_and_refuses_a_server_without_tls(tmp_path: Path) -> None:
    import asyncio

    server = FtpDropServer(tmp_path / "ftp", {"u": "the-password"})
    port = server.start("127.0.0.1", 0)
    try:
        with pytest.raises(ConnectorError):
            asyncio.run(FtpFolder("127.0.0.1", port, user="u", password="the-password").list())
        plain = FtpFolder("127.0.0.1", port, user="u", password="the-password", tls=False)
        assert asyncio.run(plain.list()) == []
        assert "the-password" not in repr(plain)
    finally:
        server.stop()


CONFIG = """
suppliers:
  - id: acme
    kind: {kind}
    endpoint: {endpoint}
{extra}    mapping: {{sku: sku, quantity: qty, observed_at: t}}
"""


def test_credentials_need_https_unless_plain_http_is_configured() -> None:
    token = "    credentials: {bearer: {env: T}}\n"
    with pytest.raises(ConfigurationError, match="https"):
        parse_suppliers(CONFIG.format(kind="rest", endpoint="http://x/i", extra=token))
    with pytest.raises(ConfigurationError, match="https"):
        parse_suppliers(CONFIG.format(kind="graphql", endpoint="http://x/g", extra=token))
    parse_suppliers(CONFIG.format(kind="rest", endpoint="https://x/i", extra=token))
    parse_suppliers(CONFIG.format(kind="rest", endpoint="http://x/i",
                                  extra=token + "    allow_plain_http: true\n"))
    ftp = parse_suppliers(CONFIG.format(
        kind="ftp", endpoint="ftp://x/", extra="    credentials: {username: u, password: "
                                               "{env: P}}\n")).suppliers[0]
    assert ftp.tls is True and ftp.insecure_skip_host_key_check is False  # type: ignore[union-attr]


# --- 6. secrets ---------------------------------------------------------------------------

def test_production_is_the_default_and_refuses_the_demo_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKFLOW_ENVIRONMENT", raising=False)
    assert Settings().environment == "production"
    ref = SecretRef(env="BOLT_WEBHOOK_SECRET", default="demo-bolt-secret")
    with pytest.raises(ConfigurationError, match="not set"):
        ref.resolve({}, environment="production")
    with pytest.raises(ConfigurationError, match="demo value"):
        ref.resolve({"BOLT_WEBHOOK_SECRET": "demo-bolt-secret"}, environment="production")
    assert ref.resolve({"BOLT_WEBHOOK_SECRET": "real"}, environment="production") == "real"
    assert ref.resolve({}, environment="development") == "demo-bolt-secret"
    assert "demo-bolt-secret" not in repr(ref)
    endpoint = WebhookSupplier("bolt", b"s3cr3t-value", RecordMapper("bolt", "webhook", MAPPING))
    assert "s3cr3t-value" not in repr(endpoint)


# --- 13. truncated snapshots, 14. symlinks --------------------------------------------------

async def test_a_truncated_upload_never_zeroes_stock_under_the_defaults(tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    emitter = MemoryEmitter()
    source = CsvDropSource("s", connector="local", folder=LocalFolder(drops),
                           mapper=RecordMapper("s", "local", MAPPING), emitter=emitter,
                           store=CursorStore(tmp_path / "state.sqlite"),
                           options=CsvOptions(stable_s=0))
    full = b"sku,qty\n" + b"".join(f"S{i},{i + 1}\n".encode() for i in range(100))
    (drops / "a.csv").write_bytes(full)
    os.utime(drops / "a.csv", (1000, 1000))
    await source.poll_once()
    await source.poll_once()
    assert len(emitter.deltas) == 100
    (drops / "b.csv").write_bytes(full[:len(full) * 6 // 10])  # cut mid-row at 60 %
    os.utime(drops / "b.csv", (2000, 2000))
    await source.poll_once()
    await source.poll_once()
    assert len(emitter.deltas) == 100  # nothing zeroed, nothing half-read applied
    assert emitter.dead_letters[-1]["reason"] == "suspect_snapshot"


async def test_symlinks_in_a_drop_folder_are_neither_listed_nor_read(tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("sku,qty\nTOP-SECRET,1\n")
    (drops / "stock.csv").symlink_to(secret)
    folder = LocalFolder(drops)
    assert await folder.list() == []
    with pytest.raises(ConnectorError):
        await folder.read("stock.csv")
    with pytest.raises(ConnectorError):
        await folder.read("../secret.txt")


# --- 16. a huge signed webhook body -----------------------------------------------------------

async def test_a_signed_megabyte_of_tiny_events_is_refused_quickly() -> None:
    emitter = MemoryEmitter()
    secret = b"k" * 32
    receiver = WebhookReceiver({"bolt": WebhookSupplier(
        "bolt", secret, RecordMapper("bolt", "webhook", MAPPING))}, emitter)
    port = await receiver.start("127.0.0.1", 0)
    body = json.dumps({"events": [{}] * 250_000}, separators=(",", ":")).encode()
    assert len(body) <= 1_048_576
    ts = int(time.time())
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/webhooks/bolt", data=body,
            headers={TIMESTAMP_HEADER: str(ts),
                     SIGNATURE_HEADER: webhook_signature(secret, ts, body)}) as resp:
        status, answer = resp.status, await resp.json()
    elapsed = time.perf_counter() - started
    await receiver.stop()
    assert (status, answer["error"]) == (413, "too_many_events")
    assert emitter.dead_letters == [] and emitter.deltas == []
    assert elapsed < 1.0


# --- 18. the CLI --------------------------------------------------------------------------

def test_a_sku_that_looks_like_markup_is_printed_as_it_is() -> None:
    availability: dict[str, Any] = {
        "platform_sku": "[/oops]", "total": 3, "best_supplier": "[bold]s",
        "suppliers": {"[bold]s": {"sku": "[/oops]", "quantity": 3, "status": "ACTIVE",
                                  "lead_time_days": None, "price": None, "currency": None,
                                  "version": 1, "updated_at": 0}}}
    console = Console(record=True, width=200)
    console.print(availability_table(availability, "cassandra"))
    text = console.export_text()
    assert "[/oops]" in text and "[bold]s" in text


# --- 19. a restarted simulator ------------------------------------------------------------

def test_a_restarted_simulated_supplier_never_reuses_versions_or_event_ids() -> None:
    first = SimulatedSupplier("acme", skus=10, seed=42, clock=lambda: 1_000_000)
    changes = first.step(50)
    again = SimulatedSupplier("acme", skus=10, seed=42, clock=lambda: 1_000_000 + 1000)
    later = again.step(50)
    assert min(c.item.version for c in later) > max(i.version for i in first.items.values())
    assert not {c.event_id for c in changes} & {c.event_id for c in later}
    assert min(i.revision for i in again.items.values()) > first.revision


async def test_a_redirect_is_not_followed_with_the_token(supplier: ScriptedSupplier,
                                                         tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    source = RestSource("s", options=RestOptions(url=f"http://127.0.0.1:{supplier.port}/i"),
                        http=http("rest"), mapper=RecordMapper("s", "rest", MAPPING),
                        emitter=emitter, store=CursorStore(tmp_path / "state.sqlite"))
    supplier.push(b"", status=302, headers={"Location": f"http://127.0.0.1:{supplier.port}/x"})
    supplier.push({"items": [{"sku": "A", "qty": 1, "version": 1, "updated_at": 1}]})
    with pytest.raises(ConnectorError, match="redirected"):
        await source.poll_once()
    assert len(supplier.script) == 1  # the redirect target was never asked
    await source.close()
