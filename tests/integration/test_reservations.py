"""Reservations end to end: the real worker and `stockflow api` on the local stack.

500 concurrent holds of one unit against 10 available, with the worker SIGKILLed and the API
restarted mid-burst: exactly 10 granted, 490 SOLD_OUT, retries with the same Idempotency-Key
answered the same, no second hold; the SSE stream in order and resumed with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.pipeline_env import ROOT, PipelineEnv, free_port
from connectors.api.keys import hash_key

pytestmark = pytest.mark.integration

KEY = "test-key-1"


class Stack:
    """A PipelineEnv with its worker and a `stockflow api` subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.env = PipelineEnv(tmp, partitions=2, extra_env={
            "STOCKFLOW_API_PORT": str(self.port),
            "STOCKFLOW_API_KEYS": "tests:" + hash_key(KEY),
            "STOCKFLOW_API_TICK_INTERVAL_S": "0.3",
            "STOCKFLOW_API_DECISION_TIMEOUT_S": "3",
            "STOCKFLOW_API_RATE_PER_S": "100000", "STOCKFLOW_API_RATE_BURST": "100000",
        })
        self.tmp = tmp
        self.api: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.sequence = 0

    def start_api(self) -> None:
        log = (self.tmp / "api.log").open("ab")
        self.api = subprocess.Popen([sys.executable, "-m", "pipeline.shell.cli", "api"],
                                    env=self.env.env, cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def kill_api(self, sig: int = signal.SIGKILL) -> None:
        if self.api is not None:
            os.killpg(self.api.pid, sig)
            self.api.wait(30)
            self.api = None

    def wait_ready(self) -> None:
        import urllib.request

        def ready() -> bool:
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=2) as r:
                    return bool(r.status == 200)
            except Exception:
                return False

        self.env.wait_until(ready, 90, f"API ready; log:\n{self.api_log()}")

    def api_log(self) -> str:
        path = self.tmp / "api.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def supply(self, sku: str, quantity: int) -> None:
        """A supplier SNAPSHOT of `quantity` units of sku."""
        self.sequence += 1
        now = int(time.time() * 1000)
        with self.env.producer() as producer:
            producer.produce({
                "supplier_id": "s1", "sku": sku, "event_id": f"{sku}-{self.sequence}",
                "sequence": self.sequence, "kind": "SNAPSHOT", "quantity": quantity,
                "observed_at": now, "price": None, "currency": None, "warehouse": None,
                "lead_time_days": None, "status": "ACTIVE", "connector": "test",
                "received_at": now})

    def get(self, path: str) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.base + path, headers={"X-API-Key": KEY})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_available(self, sku: str, total: int) -> None:
        """Until the API reads `total` and its change is committed on inventory.changes: the
        aggregate writes Redis before its transaction commits (cache_writer inline), so a
        stream opened in between would get the change again after its reset."""
        self.env.wait_until(
            lambda: self.get(f"/v1/inventory/{sku}")[1].get("supplier_total") == total,
            60, f"{sku} supplier total {total}")
        self.env.wait_until(
            lambda: any(k == sku.encode() and v["total_available"] == total
                        for k, v in self.env.read_topic("inventory.changes", "InventoryChange",
                                                        idle_s=0.5)),
            60, f"{sku}'s change to {total} committed on inventory.changes")

    def decisions(self, sku: str) -> list[dict[str, Any]]:
        return [v for k, v in self.env.read_topic("reservations.decisions",
                                                  "ReservationDecision", idle_s=3)
                if k == sku.encode()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("reservations"))
    try:
        s.env.setup()
        s.env.start_worker()
        s.start_api()
        s.wait_ready()
        yield s
    finally:
        s.kill_api()
        s.env.cleanup()


async def hold(session: aiohttp.ClientSession, base: str, sku: str, key: str,
               deadline: float) -> tuple[int, dict[str, Any]]:
    """POST a hold, retrying (same Idempotency-Key) on 503 and on a connection error."""
    while True:
        try:
            async with session.post(f"{base}/v1/reservations",
                                    json={"platform_sku": sku, "quantity": 1},
                                    headers={"X-API-Key": KEY, "Idempotency-Key": key}) as r:
                body = await r.json()
                if r.status != 503:
                    return r.status, body
        except (TimeoutError, aiohttp.ClientError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer for {key} in time")
        await asyncio.sleep(0.3)


async def burst(base: str, sku: str, n: int, *, during: Any = None
                ) -> dict[str, tuple[int, dict[str, Any]]]:
    deadline = time.monotonic() + 150
    timeout = aiohttp.ClientTimeout(total=20)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        keys = [f"{sku}-k{i}" for i in range(n)]
        tasks = [asyncio.create_task(hold(session, base, sku, k, deadline)) for k in keys]
        if during is not None:
            await during(tasks)
        answers = await asyncio.gather(*tasks)
    return dict(zip(keys, answers, strict=True))


def check_exactly(stack: Stack, sku: str, answers: dict[str, tuple[int, dict[str, Any]]],
                  available: int) -> None:
    granted = {k: b["reservation_id"] for k, (st, b) in answers.items() if st == 201}
    sold_out = [k for k, (st, b) in answers.items() if st == 409 and b["error"] == "SOLD_OUT"]
    assert len(granted) == available, {st for st, _ in answers.values()}
    assert len(sold_out) == len(answers) - available
    assert len(set(granted.values())) == available  # one hold per key, none shared
    # The log agrees: exactly `available` holds were granted (replays change nothing).
    decisions = stack.decisions(sku)
    made = [d for d in decisions if d["outcome"] == "GRANTED" and not d["replayed"]]
    assert sorted(d["reservation_id"] for d in made) == sorted(granted.values())
    assert all(d["available"] >= 0 for d in decisions)
    status, view = stack.get(f"/v1/inventory/{sku}")
    assert status == 200 and view["available"] == 0 and view["reserved"] == available


def test_500_concurrent_holds_grant_exactly_the_10_available(stack: Stack) -> None:
    stack.supply("BURST-1", 10)
    stack.wait_available("BURST-1", 10)
    answers = asyncio.run(burst(stack.base, "BURST-1", 500))
    check_exactly(stack, "BURST-1", answers, 10)
    # Retries with the same Idempotency-Keys: the same answers, no new hold.
    again = asyncio.run(burst(stack.base, "BURST-1", 500))
    assert {k: (st, b.get("reservation_id"), b.get("error")) for k, (st, b) in again.items()} \
        == {k: (st, b.get("reservation_id"), b.get("error")) for k, (st, b) in answers.items()}
    check_exactly(stack, "BURST-1", answers, 10)


def test_holds_survive_a_worker_sigkill_and_an_api_restart_mid_burst(stack: Stack) -> None:
    stack.supply("BURST-2", 10)
    stack.wait_available("BURST-2", 10)

    answered_before_kill: list[int] = []

    async def disrupt(tasks: list[asyncio.Task[Any]]) -> None:
        while sum(t.done() for t in tasks) < 50:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(stack.env.kill_worker)  # SIGKILL, mid-transaction
        answered_before_kill.append(sum(t.done() for t in tasks))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.env.start_worker)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(stack.kill_api)  # and the API, with requests waiting
        await asyncio.to_thread(stack.start_api)

    answers = asyncio.run(burst(stack.base, "BURST-2", 500, during=disrupt))
    assert answered_before_kill[0] < 450, "the burst was over before the worker was killed"
    stack.wait_ready()
    check_exactly(stack, "BURST-2", answers, 10)


def test_reads_etag_pagination_errors_and_operations(stack: Stack) -> None:
    import urllib.error
    import urllib.request

    for i in range(3):
        stack.supply(f"READ-{i}", 10 + i)
    for i in range(3):
        stack.wait_available(f"READ-{i}", 10 + i)

    def raw(path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(stack.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.headers, r.read()  # names case-insensitive
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    auth = {"X-API-Key": KEY}
    status, headers, body = raw("/v1/inventory/READ-1", auth)
    assert status == 200 and json.loads(body)["supplier_total"] == 11
    assert raw("/v1/inventory/READ-1", {**auth, "If-None-Match": headers["ETag"]})[0] == 304
    strong = json.loads(raw("/v1/inventory/READ-1?consistency=strong", auth)[2])
    assert strong["source"] == "cassandra" and strong["supplier_total"] == 11
    assert raw("/v1/inventory/NOPE", auth)[0] == 404
    assert raw("/v1/inventory/READ-1")[0] == 401
    status, _, body = raw("/v1/inventory?limit=0", auth)
    assert status == 422 and json.loads(body)["field"] == "limit"
    # Every page, cursor after cursor: each SKU once.
    seen: list[str] = []
    cursor = "0"
    while True:
        page = json.loads(raw(f"/v1/inventory?limit=2&cursor={cursor}", auth)[2])
        seen += [i["platform_sku"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert {f"READ-{i}" for i in range(3)} <= set(seen) and len(seen) == len(set(seen))
    assert raw("/docs")[0] == 200 and "/v1/reservations" in json.loads(
        raw("/openapi.json")[2])["paths"]
    assert b"stockflow_api_requests_total" in raw("/metrics")[2]


def test_errors_are_precise(stack: Stack) -> None:
    """409 SOLD_OUT with `available` and Retry-After; 404 for a reservation nobody made;
    410 EXPIRED; 422 naming the field; 409 for a key whose hold ended."""
    import urllib.error
    import urllib.request

    sku = "ERRORS-1"
    stack.supply(sku, 3)
    stack.wait_available(sku, 3)

    def call(method: str, path: str, body: Any = None, key: str | None = None,
             ) -> tuple[int, Any, dict[str, Any]]:
        headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        request = urllib.request.Request(stack.base + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.headers, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, json.loads(exc.read())

    status, _, held = call("POST", "/v1/reservations", {"platform_sku": sku, "quantity": 2},
                           "e-1")
    assert status == 201 and held["available"] == 1
    status, headers, body = call("POST", "/v1/reservations",
                                 {"platform_sku": sku, "quantity": 2}, "e-2")
    assert status == 409 and body["error"] == "SOLD_OUT" and body["available"] == 1
    assert int(headers["Retry-After"]) >= 1
    # The same key again: the same answer, marked as a replay.
    status, headers, again = call("POST", "/v1/reservations",
                                  {"platform_sku": sku, "quantity": 2}, "e-2")
    assert (status, again["available"], headers["Idempotent-Replayed"]) == (409, 1, "true")

    from pipeline.reservations import reservation_id
    never = reservation_id(sku, "tests:never-held")  # well formed: the worker answers
    for method, path in (("POST", f"/v1/reservations/{never}/confirm"),
                         ("DELETE", f"/v1/reservations/{never}"),
                         ("POST", "/v1/reservations/garbage/confirm"),
                         ("DELETE", "/v1/reservations/garbage")):
        status, _, body = call(method, path)
        assert (status, body["error"]) == (404, "NOT_FOUND"), (method, path, body)

    for bad, field in (({"platform_sku": sku, "quantity": 0}, "quantity"),
                       ({"platform_sku": sku, "quantity": 1001}, "quantity"),
                       ({"platform_sku": sku, "quantity": 1, "ttl_s": -1}, "ttl_s"),
                       ({"quantity": 1}, "platform_sku")):
        status, _, body = call("POST", "/v1/reservations", bad, "e-bad")
        assert (status, body["error"], body["field"]) == (422, "INVALID", field), (bad, body)
    status, _, body = call("POST", "/v1/reservations", {"platform_sku": sku, "quantity": 1})
    assert (status, body["field"]) == (422, "Idempotency-Key"), body

    # Released, then its key again: the first answer again, and no second hold.
    status, _, body = call("DELETE", f"/v1/reservations/{held['reservation_id']}")
    assert (status, body["available"]) == (200, 3)
    status, headers, body = call("POST", "/v1/reservations",
                                 {"platform_sku": sku, "quantity": 2}, "e-1")
    assert (status, body["reservation_id"], headers["Idempotent-Replayed"]) == (
        201, held["reservation_id"], "true")
    assert stack.get(f"/v1/inventory/{sku}")[1]["available"] == 3
    # A hold that expired cannot be confirmed: 410 EXPIRED.
    status, _, short = call("POST", "/v1/reservations",
                            {"platform_sku": sku, "quantity": 1, "ttl_s": 1}, "e-3")
    assert status == 201
    stack.env.wait_until(lambda: stack.get(f"/v1/inventory/{sku}")[1]["available"] == 3,
                         20, "the 1 s hold expired")
    status, _, body = call("POST", f"/v1/reservations/{short['reservation_id']}/confirm")
    assert (status, body["error"]) == (410, "EXPIRED"), body


def test_confirmed_sale_counts_until_a_later_snapshot_reflects_it(stack: Stack) -> None:
    """Expiry, release, confirm and the snapshot that reflects the sale, against a model."""
    import urllib.request

    sku = "CONFIRM-1"
    stack.supply(sku, 5)
    stack.wait_available(sku, 5)

    def call(method: str, path: str, key: str | None = None, body: Any = None
             ) -> tuple[int, Any]:
        headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        request = urllib.request.Request(stack.base + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def available() -> int:
        return int(stack.get(f"/v1/inventory/{sku}")[1]["available"])

    model = 5
    status, short = call("POST", "/v1/reservations", "c-short",
                         {"platform_sku": sku, "quantity": 1, "ttl_s": 1})
    assert status == 201
    status, kept = call("POST", "/v1/reservations", "c-kept", {"platform_sku": sku,
                                                              "quantity": 2})
    assert status == 201 and kept["available"] == model - 3
    status, gone = call("POST", "/v1/reservations", "c-gone", {"platform_sku": sku,
                                                              "quantity": 1})
    assert status == 201 and gone["available"] == model - 4
    assert call("DELETE", f"/v1/reservations/{gone['reservation_id']}")[1]["available"] \
        == model - 3
    # The 1 s hold expires by the log's clock (the API's ticks): back to 5 - 2.
    stack.env.wait_until(lambda: available() == model - 2, 20, "the short hold expired")
    assert call("POST", f"/v1/reservations/{short['reservation_id']}/confirm")[0] == 410
    status, confirmed = call("POST", f"/v1/reservations/{kept['reservation_id']}/confirm")
    assert status == 200 and confirmed["supplier_id"] == "s1"
    assert available() == model - 2  # the confirmed sale still counts: 3
    # The supplier's next snapshot, observed after the sale, says 3: counted once, 3 left.
    stack.supply(sku, 3)
    stack.env.wait_until(lambda: stack.get(f"/v1/inventory/{sku}")[1]["reserved"] == 0,
                         20, "the snapshot reflected the confirmed sale")
    assert available() == 3
    orders = [v for k, v in stack.env.read_topic("reservations.orders", "Order", idle_s=2)
              if v["platform_sku"] == sku]
    assert [(o["order_id"], o["supplier_id"], o["quantity"]) for o in orders] == [
        (kept["reservation_id"], "s1", 2)]
    # Every change of available-to-promise is an InventoryChange on inventory.changes too,
    # in decision order: the model's value after each step above.
    changes = [c for k, c in stack.env.read_topic("inventory.changes", "InventoryChange",
                                                  idle_s=2)
               if k == sku.encode() and c["cause"] == "RESERVATION"]
    assert [(c["reservation_outcome"], c["reservation_id"], c["available_to_promise"])
            for c in changes] == [
        ("GRANTED", short["reservation_id"], 4), ("GRANTED", kept["reservation_id"], 2),
        ("GRANTED", gone["reservation_id"], 1), ("RELEASED", gone["reservation_id"], 2),
        ("EXPIRED", short["reservation_id"], 3), ("CONFIRMED", kept["reservation_id"], 3),
        ("REFLECTED", kept["reservation_id"], 3)]
    assert [c["reservation_sequence"] for c in changes] == sorted(
        c["reservation_sequence"] for c in changes)
    assert changes[-1]["total_available"] == 3 and changes[-2]["total_available"] == 5


async def read_events(base: str, sku: str, n: int, last_event_id: str | None = None,
                      timeout: float = 30, first: asyncio.Event | None = None
                      ) -> list[tuple[str, str, dict[str, Any]]]:
    """The first n events (id, event, data) of /v1/stream for one SKU; `first` is set when
    the first event arrived (the stream is open and positioned)."""
    headers = {"X-API-Key": KEY}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    out: list[tuple[str, str, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as session, session.get(
            f"{base}/v1/stream", params={"skus": sku}, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        assert r.status == 200
        eid = event = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((eid, event, json.loads(line[6:])))
                if first is not None:
                    first.set()
                if len(out) >= n:
                    return out
    return out


def test_stream_is_in_order_and_resumes_with_last_event_id(stack: Stack) -> None:
    sku = "STREAM-1"
    stack.supply(sku, 5)
    stack.wait_available(sku, 5)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            opened = asyncio.Event()
            reader = asyncio.create_task(read_events(stack.base, sku, 4, first=opened))
            await asyncio.wait_for(opened.wait(), 30)  # its reset came: the stream is open
            deadline = time.monotonic() + 60
            for i in range(3):
                assert (await hold(session, stack.base, sku, f"s-{i}", deadline))[0] == 201
            first = await reader
            # The reset first (no Last-Event-ID), then the three holds in decision order.
            assert first[0][1] == "reset" and first[0][2]["available"] == 5
            holds = [e for e in first if e[1] == "availability"]
            assert [e[2]["available"] for e in holds[:3]] == [4, 3, 2]
            seqs = [e[2]["sequence"] for e in holds[:3]]
            assert seqs == sorted(seqs)
            last_id = holds[2][0]
            # Disconnected: two more holds happen; the resume gets exactly those, in order.
            for i in range(3, 5):
                assert (await hold(session, stack.base, sku, f"s-{i}", deadline))[0] == 201
            resumed = await read_events(stack.base, sku, 2, last_event_id=last_id)
            assert [e[1] for e in resumed] == ["availability", "availability"]
            assert [e[2]["available"] for e in resumed] == [1, 0]
            ids = [int(e[0].split("-")[1]) for e in resumed]
            assert ids[0] > int(last_id.split("-")[1]) and ids == sorted(ids)

    asyncio.run(scenario())


def _browser() -> Any:
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            raise AssertionError("chromium and chromedriver are missing (.ci/bootstrap.sh)")
        pytest.skip("chromium and chromium-driver (Debian packages) are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""),
                            options=options)


def test_a_hold_on_the_page_shows_on_a_second_page_within_a_second(stack: Stack) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sku = "PAGE-1"
    stack.supply(sku, 7)
    stack.wait_available(sku, 7)
    driver = _browser()
    try:
        def open_page() -> str:
            driver.get(stack.base + "/")
            for field, value in (("key", KEY), ("skus", sku)):
                box = driver.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            driver.find_element(By.ID, "load").click()
            WebDriverWait(driver, 15).until(
                lambda d: d.find_element(By.ID, "state").text == "live")
            return str(driver.current_window_handle)

        def available() -> str:
            return str(driver.find_element(
                By.CSS_SELECTOR, f'tr[data-sku="{sku}"] [data-col=available]').text)

        first = open_page()
        driver.switch_to.new_window("tab")
        second = open_page()
        WebDriverWait(driver, 15).until(lambda _d: available() == "7")
        driver.switch_to.window(first)
        driver.find_element(By.CSS_SELECTOR, f'tr[data-sku="{sku}"] button.hold').click()
        clicked = time.monotonic()
        driver.switch_to.window(second)
        WebDriverWait(driver, 5, poll_frequency=0.02).until(lambda _d: available() == "6")
        elapsed = time.monotonic() - clicked
        assert elapsed < 1.0, f"the second page showed the hold after {elapsed:.2f} s"
        # And a release made on the first page gives the unit back on the second.
        driver.switch_to.window(first)
        driver.find_element(By.CSS_SELECTOR, f'tr[data-sku="{sku}"] button.release').click()
        driver.switch_to.window(second)
        WebDriverWait(driver, 5, poll_frequency=0.02).until(lambda _d: available() == "7")
    finally:
        driver.quit()
