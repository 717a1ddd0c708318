"""Fault injection for the reliability suite: workers to start, kill, pause and resume, a TCP
proxy to cut a store off from one pipeline, a paced feeder, and the end-state checks with the
numbers docs/reliability.md reports (events, lost, duplicated, time to converge, lag)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import socket
import threading
import time
from collections import Counter
from typing import Any

from bench.messy_workload import build_workload, send_all
from bench.pipeline_env import PipelineEnv, free_port
from bench.worker_process import RESULTS, ChaosWorker, lag, wait_for
from tests.integration.test_pipeline_e2e import assert_end_state
from tests.integration.test_rebalance import assert_change_chain
from tests.unit.reference_model import reference_run


def full() -> bool:
    """The full suite (`make test-reliability`), not the trimmed one `make test` runs."""
    return os.environ.get("STOCKFLOW_RELIABILITY_FULL") == "1"


def workload(seed: int, full_events: int) -> tuple[list[dict[str, Any]],
                                                  list[tuple[bytes, bytes, str]]]:
    """The messy workload of the end-to-end test; the trimmed suite keeps a third of its keys
    (each kept key with all its events, in order, so the reference model still applies)."""
    valid, malformed = build_workload(seed=seed, target_events=full_events if full() else 9_000)
    if full():
        return valid, malformed
    kept = [d for d in valid if int(d["sku"].rsplit("-", 1)[1]) % 3 == 0]
    return kept, malformed[: len(malformed) // 3]


class Supervisor(threading.Thread):
    """Starts a worker again once it has exited, as systemd or a StatefulSet would (after
    `delay_s`), for as long as it runs; records each exit (worker, exit code, when)."""

    def __init__(self, workers: list[ChaosWorker], delay_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.workers, self.delay_s = workers, delay_s
        self.exits: list[tuple[str, int | None, float]] = []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            with self._lock:
                for w in self.workers:
                    if w.proc is not None and w.proc.poll() is not None:
                        self.exits.append((w.name, w.proc.returncode, time.monotonic()))
                        if not self._stop_event.wait(self.delay_s):
                            w.start()

    def stop(self) -> None:
        """Restart nothing more (before the test stops the workers itself)."""
        self._stop_event.set()
        with self._lock:
            pass  # a restart under way has finished
        if self.is_alive():
            self.join(10)


class Feeder(threading.Thread):
    """Sends the workload in chunks, one every `pause_s`, while faults are injected."""

    def __init__(self, env: PipelineEnv, valid: list[dict[str, Any]],
                 malformed: list[tuple[bytes, bytes, str]], chunks: int,
                 pause_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.env, self.valid, self.malformed = env, valid, malformed
        self.chunks, self.pause_s = chunks, pause_s
        self.sent_chunks = 0
        self.error: BaseException | None = None
        self._stop_pacing = threading.Event()

    def send_chunk(self, i: int) -> None:
        size = len(self.valid) // self.chunks + 1
        bad = len(self.malformed) // self.chunks + 1
        send_all(self.env, self.valid[i * size:(i + 1) * size],
                 self.malformed[i * bad:(i + 1) * bad], random.Random(i))

    def run(self) -> None:
        try:
            for i in range(self.sent_chunks, self.chunks):
                self.send_chunk(i)
                self.sent_chunks = i + 1
                self._stop_pacing.wait(self.pause_s)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self, timeout: float = 300) -> None:
        """Send the rest without pacing and wait for it."""
        self._stop_pacing.set()
        self.join(timeout)
        assert not self.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise self.error


class TcpProxy:
    """A TCP forwarder in front of one store for one pipeline; `cut()` closes the listener
    and every open connection (the store looks down to that pipeline only), `restore()`
    listens again on the same port."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        self.restore()
        return self

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._closed = True
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select(timeout=1.0):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def wait_converged(env: PipelineEnv, workers: list[ChaosWorker], timeout: float = 300,
                   fatal_marker: str | None = None) -> float:
    """Seconds until every input record is committed by the group; fails at once when a
    worker's log shows `fatal_marker` (a worker that will never converge)."""
    started = time.monotonic()

    def converged() -> bool:
        if fatal_marker:
            for w in workers:
                text = w.full_text()
                if fatal_marker in text:
                    line = next(x for x in text.splitlines() if fatal_marker in x)
                    raise AssertionError(f"{w.name} logged {line!r}; it stops making progress")
        return lag(env) == 0

    wait_for(converged, timeout, "the group to consume everything", workers)
    return time.monotonic() - started


def outcome(env: PipelineEnv, valid: list[dict[str, Any]],
            malformed: list[tuple[bytes, bytes, str]]) -> dict[str, int]:
    """Events sent, effective changes the reference model expects, and how many of them are
    missing (lost) or present more than once (duplicated) in inventory.changes; dead letters
    written twice."""
    ref = reference_run(valid, dedup_per_key=True)
    changes = env.read_topic("inventory.changes", "InventoryChange", expect=len(ref.changes))
    seen = Counter((c["supplier_id"], c["sku"], c["version"]) for _, c in changes)
    expected = {(c["supplier_id"], c["sku"], c["version"]) for c in ref.changes}
    dead = env.read_topic("inventory.deadletter", "DeadLetter", expect=len(malformed))
    sources = Counter((d["source_partition"], d["source_offset"]) for _, d in dead)
    return {
        "events": len(valid) + len(malformed),
        "expected_changes": len(expected),
        "lost": len(expected - set(seen)),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "unexpected": len(set(seen) - expected),
        "dead_letters_twice": sum(1 for n in sources.values() if n > 1),
    }


def check_and_record(case: str, faults: str, env: PipelineEnv, valid: list[dict[str, Any]],
                     malformed: list[tuple[bytes, bytes, str]], *, converge_s: float,
                     lag_at_chaos_end: int, extra: dict[str, Any] | None = None) -> None:
    """Record the case's numbers, then assert the end state: the reference model's tables,
    one change per effective change, the change chain, no dead letter twice."""
    numbers = outcome(env, valid, malformed)
    row = {"case": case, "faults": faults, "full": full(), **numbers,
           "converge_s": round(converge_s, 1), "lag_at_chaos_end": lag_at_chaos_end,
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    assert numbers["lost"] == 0 and numbers["duplicated"] == 0 and \
        numbers["unexpected"] == 0, row
    assert numbers["dead_letters_twice"] == 0, row
    assert_end_state(env, valid, malformed)
    assert_change_chain(env)


def stop_all(workers: list[ChaosWorker]) -> None:
    for w in workers:
        if w.proc is not None:
            w.signal(signal.SIGCONT)  # a paused worker cannot die of SIGKILL's cleanup wait
            w.stop(signal.SIGKILL)

