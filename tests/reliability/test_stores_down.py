"""Case 3: Cassandra and Redis go away during a rebalance. The shared stack's servers are not
touched: the workers reach them through a TCP proxy of this test's own, and the proxy is cut
(listener and open connections closed) while a second worker joins, then restored. The
rebalance finishes once they are back; nothing is lost or written twice, and `stockflow
verify` finds the stores equal to the log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv
from tests.reliability.chaos import (
    ChaosWorker,
    Feeder,
    TcpProxy,
    check_and_record,
    full,
    lag,
    stop_all,
    wait_converged,
    wait_for,
    workload,
)

PARTITIONS = 4


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = PipelineEnv(tmp_path, partitions=PARTITIONS).setup()  # sink and cache on
    yield e
    e.cleanup()


def test_cassandra_and_redis_down_during_a_rebalance(env: PipelineEnv) -> None:
    from urllib.parse import urlparse

    valid, malformed = workload(61, 20_000)
    redis_url = urlparse(env.settings.redis_url.get_secret_value())
    cassandra = TcpProxy(env.settings.cassandra_port).start()
    redis = TcpProxy(redis_url.port or 6379).start()
    proxied = {"STOCKFLOW_CASSANDRA_PORT": str(cassandra.port),
               "STOCKFLOW_REDIS_URL": redis_url._replace(
                   netloc=f"{redis_url.hostname}:{redis.port}").geturl()}
    a, b = ChaosWorker(env, "a", **proxied), ChaosWorker(env, "b", **proxied)
    workers = [a, b]
    outage_s = 30.0 if full() else 10.0
    try:
        a.start()
        wait_for(lambda: a.assigned() > 0, 120, "A assigned", workers)
        feeder = Feeder(env, valid, malformed, chunks=12, pause_s=0.7)
        feeder.start()
        wait_for(lambda: feeder.sent_chunks >= 2, 120, "load", workers)
        b.start()
        wait_for(lambda: b.events("runtime.started"), 120, "B started", workers)
        cassandra.cut()  # both stores vanish as the group rebalances
        redis.cut()
        # A's batch waits inside its transaction for Cassandra (the sink retries), so the
        # group cannot finish the rebalance B asked for until the stores are back: A only
        # answers a revoke between batches.
        time.sleep(outage_s)  # the outage itself
        lag_at_end = lag(env)
        cassandra.restore()
        redis.restore()
        restored_at = time.monotonic()
        wait_for(lambda: b.assigned() > 0, 180, "B assigned after the stores returned",
                 workers)
        rebalance_after_restore_s = time.monotonic() - restored_at
        feeder.finish()
        converge_s = wait_converged(env, workers)
        for w in workers:
            assert w.running, w.text()
        verify = env.cli("verify", "--json", "--settle", "5", check=False, timeout=300)
        check_and_record("3 Cassandra+Redis down in a rebalance",
                         f"both proxies cut {outage_s:.0f}s while B joined", env, valid,
                         malformed, converge_s=converge_s, lag_at_chaos_end=lag_at_end,
                         extra={"verify_exit": verify.returncode,
                                "rebalance_done_after_restore_s":
                                    round(rebalance_after_restore_s, 1)})
        assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
        report = json.loads(verify.stdout[verify.stdout.index("{"):])
        assert report, verify.stdout
    finally:
        stop_all(workers)
        cassandra.close()
        redis.close()
