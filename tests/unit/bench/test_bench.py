"""Unit tests of the benchmark harness: rate ladder, open-loop schedule, percentiles, ratios."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.harness import (
    PipelineCounts,
    collapsed_summary,
    cpu_us_per_event,
    histogram_quantile,
    is_bounded,
    lag_slope,
    parse_metrics,
    percentile,
    ratio,
    sustained_rate,
    window_rate,
)
from bench.report import goals, highest_bounded, ratios
from bench.workload import (
    DUPLICATE,
    FRESH,
    MALFORMED,
    STALE,
    Workload,
    WorkloadSpec,
    due_count,
    rate_ladder,
    send_open_loop,
    zipf_cumulative,
)

# ------------------------------------------------------------------ rate ladder


def test_rate_ladder_doubles_up_to_and_including_stop() -> None:
    assert rate_ladder(250, 8000) == [250, 500, 1000, 2000, 4000, 8000]


def test_rate_ladder_merges_goal_rates_inside_the_range_only() -> None:
    assert rate_ladder(1000, 8000, extra=(5000, 50_000, 10)) == [1000, 2000, 4000, 5000, 8000]


def test_rate_ladder_with_a_non_power_stop_ends_at_stop() -> None:
    assert rate_ladder(1000, 3000, 2.0) == [1000, 2000, 3000]


@pytest.mark.parametrize("args", [(0, 10), (10, 5), (10, 100, 1.0)])
def test_rate_ladder_rejects_nonsense(args: tuple) -> None:
    with pytest.raises(ValueError):
        rate_ladder(*args)


def test_due_count_is_the_schedule_of_an_open_loop() -> None:
    assert due_count(1000, 0.0) == 0
    assert due_count(1000, 0.5) == 500
    assert due_count(1000, -1) == 0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_open_loop_sends_exactly_rate_times_duration_on_schedule() -> None:
    clock = FakeClock()
    sent_at: list[float] = []
    wl = Workload(WorkloadSpec(skus=100, suppliers=3))
    sent, seconds = send_open_loop(lambda e: sent_at.append(clock.t), wl, 2000, 1.0,
                                   tick_s=0.01, clock=clock, sleep=clock.sleep)
    assert sent == 2000 == len(sent_at)
    # Never ahead of the schedule: by time t at most rate*t events are out.
    assert all(i < 2000 * t + 2000 * 0.01 + 1 for i, t in enumerate(sent_at))
    assert seconds == pytest.approx(1.0, abs=0.02)


def test_open_loop_does_not_slow_down_when_sending_is_slow() -> None:
    """A slow send (a loaded system) makes the sender burst to catch up, not drop rate."""
    clock = FakeClock()
    wl = Workload(WorkloadSpec(skus=100, suppliers=3))

    def slow_send(_e: object) -> None:
        clock.t += 0.002  # 500 sends/s at most

    sent, seconds = send_open_loop(slow_send, wl, 1000, 1.0, clock=clock, sleep=clock.sleep)
    assert sent == 1000  # the schedule is kept...
    assert seconds > 1.5  # ...and the achieved rate tells that the sender fell behind


# ------------------------------------------------------------------- workload


def test_workload_shares_and_determinism() -> None:
    spec = WorkloadSpec(skus=2000, suppliers=5, duplicate_share=0.05, stale_share=0.05,
                        malformed_share=0.02, seed=3)
    kinds = [e.kind for e in Workload(spec).events(20_000, now_ms=1_700_000_000_000)]
    again = [e.kind for e in Workload(spec).events(20_000, now_ms=1_700_000_000_000)]
    assert kinds == again
    share = {k: kinds.count(k) / len(kinds) for k in (FRESH, DUPLICATE, STALE, MALFORMED)}
    assert share[MALFORMED] == pytest.approx(0.02, abs=0.006)
    assert share[DUPLICATE] == pytest.approx(0.05, abs=0.01)
    assert share[STALE] == pytest.approx(0.05, abs=0.015)


def test_workload_events_are_stamped_with_their_send_time_and_decode() -> None:
    from schemas.codec import codec_for

    codec = codec_for("SupplierDelta")
    wl = Workload(WorkloadSpec(skus=50, suppliers=2, malformed_share=0, duplicate_share=0,
                               stale_share=0))
    e = wl.next_event(now_ms=1_234)
    rec = codec.decode(e.value)
    assert e.timestamp_ms == rec["observed_at"] == rec["received_at"] == 1_234
    assert e.key == f"{rec['supplier_id']}|{rec['sku']}".encode()


def test_workload_sequences_rise_by_one_per_key_for_fresh_events() -> None:
    from schemas.codec import codec_for

    codec = codec_for("SupplierDelta")
    wl = Workload(WorkloadSpec(skus=20, suppliers=2))
    last: dict[bytes, int] = {}
    for e in wl.events(2000, now_ms=1):
        if e.kind == FRESH:
            seq = codec.decode(e.value)["sequence"]
            assert seq == last.get(e.key, 0) + 1
            last[e.key] = seq


def test_zipf_spread_is_skewed_and_uniform_at_zero() -> None:
    cum = zipf_cumulative(1000, 1.1)
    assert cum[0] / cum[-1] > 0.1  # the hottest SKU carries > 10 % of the traffic
    flat = zipf_cumulative(4, 0.0)
    assert flat == [1.0, 2.0, 3.0, 4.0]


def test_one_per_key_covers_every_sku_once() -> None:
    wl = Workload(WorkloadSpec(skus=300, suppliers=7))
    keys = [e.key for e in wl.one_per_key(1)]
    assert len(keys) == len(set(keys)) == 300


# ---------------------------------------------------------------- percentiles


def test_percentile_matches_linear_interpolation() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile(values, 0.0) == 1
    assert percentile(values, 1.0) == 100
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile(values, 1.5)


def test_histogram_quantile_of_the_difference_between_two_scrapes() -> None:
    before = {0.1: 100.0, 0.25: 100.0, 1.0: 100.0, math.inf: 100.0}
    # 100 new observations: 50 below 0.1 s, 40 in (0.1, 0.25], 10 in (0.25, 1].
    after = {0.1: 150.0, 0.25: 190.0, 1.0: 200.0, math.inf: 200.0}
    assert histogram_quantile(before, after, 0.5) == pytest.approx(0.1)
    assert histogram_quantile(before, after, 0.7) == pytest.approx(0.1 + 0.15 * 20 / 40)
    assert histogram_quantile(before, after, 0.95) == pytest.approx(0.25 + 0.75 * 5 / 10)


def test_histogram_quantile_in_the_inf_bucket_is_the_last_bound_and_empty_is_nan() -> None:
    after = {1.0: 1.0, math.inf: 10.0}
    assert histogram_quantile({}, after, 0.99) == 1.0
    assert math.isnan(histogram_quantile(after, after, 0.5))


def test_parse_metrics_and_counts_backlog() -> None:
    text = "\n".join([
        "# HELP stockflow_events_total x",
        'stockflow_events_total{outcome="applied",stage="apply"} 90.0',
        'stockflow_events_total{outcome="duplicate",stage="apply"} 5.0',
        'stockflow_events_total{outcome="changed",stage="aggregate"} 80.0',
        'stockflow_events_total{outcome="unchanged",stage="aggregate"} 5.0',
        'stockflow_events_total{outcome="written",stage="cache"} 70.0',
        'stockflow_dead_letters_total{reason="decode_error"} 3.0',
        'stockflow_freshness_seconds_bucket{le="0.1",stage="redis"} 60.0',
        'stockflow_freshness_seconds_bucket{le="+Inf",stage="redis"} 70.0',
    ])
    counts = PipelineCounts.from_samples(parse_metrics(text))
    assert counts.handled == 98 and counts.applied == 90 and counts.aggregated == 85
    assert counts.freshness == {0.1: 60.0, math.inf: 70.0}
    # 2 not yet handled + 5 not yet aggregated + 10 changes not yet in Redis
    assert counts.backlog(100) == 17
    assert counts.backlog(100, cache=False) == 7


def test_counts_of_several_workers_add_up_counters_and_histogram_buckets() -> None:
    def worker(applied: float, fresh: float, total: float) -> list[tuple[str, dict[str, str],
                                                                          float]]:
        return parse_metrics("\n".join([
            f'stockflow_events_total{{outcome="applied",stage="apply"}} {applied}',
            f'stockflow_freshness_seconds_bucket{{le="0.1",stage="redis"}} {fresh}',
            f'stockflow_freshness_seconds_bucket{{le="+Inf",stage="redis"}} {total}']))

    counts = PipelineCounts.from_samples(worker(90, 60, 70) + worker(10, 5, 20))
    assert counts.applied == 100
    assert counts.freshness == {0.1: 65.0, math.inf: 90.0}


# ----------------------------------------------------------- lag and sustained


def test_lag_slope_is_the_growth_rate() -> None:
    assert lag_slope([(0, 0), (1, 100), (2, 200)]) == pytest.approx(100)
    assert lag_slope([(0, 5)]) == 0.0


def test_bounded_means_the_backlog_does_not_grow_in_the_second_half() -> None:
    rising = [(t / 2, 50.0 * t) for t in range(20)]  # +100/s at 1,000/s offered
    flat = [(t / 2, 30.0 + (t % 3)) for t in range(20)]
    assert not is_bounded(rising, 1000)
    assert is_bounded(flat, 1000)
    assert not is_bounded([], 1000)
    # Flat but far behind (more than 2 s of traffic queued): not bounded.
    assert not is_bounded([(t / 2, 5000.0) for t in range(20)], 1000)


def test_sustained_rate_is_the_top_of_the_first_unbroken_run_of_bounded_steps() -> None:
    steps = [{"offered_rate": r, "bounded": b}
             for r, b in ((250, True), (500, True), (1000, False), (2000, True))]
    assert sustained_rate(steps) == 500
    assert sustained_rate([{"offered_rate": 250, "bounded": False}]) == 0
    assert highest_bounded(steps)["offered_rate"] == 2000


def test_window_rate_leaves_out_start_and_tail() -> None:
    # Slow start (nothing for 5 s), then 1,000/s, then a slow tail.
    samples = [(0.0, 0.0), (5.0, 0.0), (15.0, 10_000.0), (25.0, 10_500.0)]
    rate = window_rate(samples, 10_000)
    assert rate == pytest.approx(1000.0)


def test_ratio_and_cpu_per_event() -> None:
    assert ratio(500, 2000) == 0.25
    assert math.isnan(ratio(500, 0))
    assert math.isnan(ratio(math.nan, 5))
    assert cpu_us_per_event(1.0, 1.5, 1000) == pytest.approx(500.0)
    assert math.isnan(cpu_us_per_event(0, 1, 0))


def test_report_ratios_and_goals_from_a_result() -> None:
    result = {
        "topology": {"runs": {"exactly_once": {
            "topology": {"rate_steady": 1000.0, "cpu_us_per_event": 900.0},
            "confluent_consume": {"rate": 100_000.0}, "aiokafka_getmany": {"rate": 50_000.0},
            "faust_noop": {"rate": 10_000.0, "cpu_us_per_event": 100.0}}}},
        "end_to_end": {
            "sustained_rate": 500.0,
            "steps": [{"offered_rate": 500, "bounded": True, "p99_ms": 120.0,
                       "cpu_us_per_event": {"worker": 1500.0}},
                      {"offered_rate": 1000, "bounded": False, "p99_ms": 9000.0,
                       "cpu_us_per_event": {"worker": 1400.0}}],
            "load": {"keys": 100_000, "seconds": 25.0, "drained": True},
            "baselines": {"confluent_produce": {"rate": 50_000.0},
                          "faust_noop": {"rate": 10_000.0, "cpu_us_per_event": 100.0},
                          "cassandra_execute_concurrent": {"rate": 1000.0}},
            "memory": {"keys": 10_000, "worker_rss_bytes": 200 * 2**20},
            "recovery": {"seconds": 8.0}},
    }
    r = ratios(result)
    assert r["topology[exactly_once] / confluent consume"] == pytest.approx(0.01)
    assert r["topology[exactly_once] / Faust no-op agent"] == pytest.approx(0.1)
    assert r["topology[exactly_once] worker CPU per event / Faust no-op's"] == pytest.approx(9)
    assert r["end-to-end sustained / Cassandra execute_concurrent (updates/s)"] == 0.5
    assert r["end-to-end worker CPU per event / Faust no-op's"] == pytest.approx(15)
    assert math.isnan(r["end-to-end sustained / Redis pipelined HSET"])  # not measured
    met = {g["goal"].split(" (")[0]: g["met"] for g in goals(result)}
    assert met["events/s end to end"] is False
    # The 1,000/s step was not sustained, so its p99 is no evidence either way.
    assert met["freshness p99"] is False
    assert met["burst of 100,000 snapshot rows all in Redis"] is True
    result["end_to_end"]["load"]["keys"] = 10_000  # a smaller load is not the goal's burst
    assert not {g["goal"]: g["met"] for g in goals(result)}[
        "burst of 100,000 snapshot rows all in Redis (s)"]
    assert any(g["met"] for g in goals(result) if g["goal"].startswith("recovery"))


def test_collapsed_summary_self_and_inclusive_shares() -> None:
    lines = ["main;loop;decode 30", "main;loop;send 60", "main;idle 10", "garbage"]
    s = collapsed_summary(lines)
    assert s["self"][0] == ("send", pytest.approx(0.6))
    assert dict(s["inclusive"])["loop"] == pytest.approx(0.9)
    assert dict(s["inclusive"])["main"] == pytest.approx(1.0)


def test_report_says_na_for_a_cassandra_size_it_could_not_read() -> None:
    from bench.report import markdown

    def table(mem: dict) -> str:
        text = markdown({"end_to_end": {"steps": [], "memory": mem, "recovery": {},
                                        "replay": {"measured": False, "why": "x"}}})
        return next(line for line in text.splitlines() if line.startswith("| Cassandra data"))

    assert table({"cassandra_data_bytes": None}).endswith("| n/a |")
    assert table({"cassandra_data_bytes": 3 * 2**20}).endswith("| 3.0 MB |")


# ------------------------------------------------------------ peer baselines


def test_peer_report_uses_the_steady_rate_and_flags_a_short_count() -> None:
    from bench.baselines import peer_report

    raw = {"events": 2000, "seconds": 0.4, "rate_steady": 5000.0, "rate_overall": 4500.0,
           "cpu_us_per_event": 150.0, "outcomes": {"applied": 1990, "invalid": 10},
           "what": "loop"}
    entry = peer_report(raw, 2000)
    assert entry["rate"] == 5000.0 and entry["cpu_us_per_event"] == 150.0
    assert entry["outcomes"] == {"applied": 1990, "invalid": 10} and "error" not in entry
    # No steady window (a tiny run): the overall rate; fewer records than written: an error.
    short = peer_report({**raw, "events": 1500, "rate_steady": None}, 2000)
    assert short["rate"] == 4500.0
    assert short["error"] == "handled 1,500 of 2,000 records"
    assert peer_report({**raw, "rate_steady": math.inf}, 2000)["rate"] == 4500.0


def test_peer_progress_counts_outcomes_and_times_from_the_first_event() -> None:
    from bench.peer_logic import Progress

    progress = Progress(total=1000, every=100)
    assert progress.result()["events"] == 0  # nothing seen: no rate, no division by zero
    for i in range(1000):
        progress.add("applied" if i % 10 else "invalid")
    out = progress.result(what="x")
    assert out["events"] == 1000 and out["what"] == "x"
    assert out["outcomes"] == {"invalid": 100, "applied": 900}
    assert out["rate_steady"] > 0 and out["cpu_us_per_event"] >= 0
    assert [v for _, v in progress.samples][:3] == [0.0, 100.0, 200.0]


def test_peer_step_runs_stockflows_rules_on_raw_records() -> None:
    """The peers' step: decode, validate, dedup by event_id, decide, one output each."""
    from bench.peer_logic import DEAD_LETTER, UPDATE, DeltaStep

    wl = Workload(WorkloadSpec(skus=5, suppliers=1, malformed_share=0, duplicate_share=0,
                               stale_share=0, adjustment_share=0))
    first = wl.next_event(now_ms=1_700_000_000_000)
    step = DeltaStep("deltas", dedup_ttl_ms=3_600_000)
    res = step(first.value, first.key, first.timestamp_ms, None, 0, 0)
    assert res.outcome == "applied" and res.state is not None
    [(kind, key, update)] = res.emits
    assert kind == UPDATE and update["quantity_before"] == 0
    assert key == update["platform_sku"].encode()
    # The same bytes again, against the new state: a duplicate, nothing sent or changed.
    again = step(first.value, first.key, first.timestamp_ms + 5, res.state, 0, 1)
    assert (again.outcome, again.state, again.emits) == ("duplicate", None, [])
    bad = step(b"\x00not avro", b"k", first.timestamp_ms, None, 3, 7)
    assert bad.outcome == "invalid" and bad.state is None
    [(kind, key, dl)] = bad.emits
    assert kind == DEAD_LETTER and key == b"k"
    assert (dl["reason"], dl["source_partition"], dl["source_offset"]) == ("decode_error", 3, 7)


def _topology_result(quix: dict, loop: dict) -> dict:
    return {"topology": {"runs": {"exactly_once": {
        "topology": {"rate_steady": 2000.0, "cpu_us_per_event": 500.0},
        "faust_noop": {"rate": 10_000.0, "cpu_us_per_event": 100.0},
        "peer_quix": quix, "peer_loop": loop}}}}


def test_report_puts_the_peers_next_to_the_topology_with_ratios_and_goals() -> None:
    from bench.report import markdown

    result = _topology_result({"rate": 8_000.0, "cpu_us_per_event": 125.0},
                              {"rate": 10_000.0, "cpu_us_per_event": 100.0})
    r = ratios(result)
    assert r["topology[exactly_once] / Quix Streams (same rules)"] == pytest.approx(0.25)
    assert r["topology[exactly_once] / confluent-kafka loop (same rules)"] == pytest.approx(0.2)
    assert r["topology[exactly_once] worker CPU per event / Quix Streams (same rules)'s"] \
        == pytest.approx(4)
    peer_goals = {g["goal"]: g for g in goals(result) if "same rules" in g["goal"]}
    assert [round(g["measured"], 2) for g in peer_goals.values()] == [0.25, 0.2]
    assert not any(g["met"] for g in peer_goals.values())
    text = markdown(result)
    assert "| exactly_once | Quix Streams (same rules) | 8,000 | 125 | 0.250 |" in text
    assert "| exactly_once | confluent-kafka loop (same rules) | 10,000 | 100 | 0.200 |" in text
    assert "| topology / Quix Streams with the same rules, same run (exactly-once) | 0.25 | " \
        "1.00 | no |" in text


def test_report_says_why_a_peer_was_not_measured() -> None:
    from bench.report import markdown

    result = _topology_result({"skipped": "could not build the venv (no network?)"},
                              {"error": "peer-loop exited 1; see x.log"})
    text = markdown(result)
    assert "| Quix Streams (same rules) | not measured: could not build the venv " \
        "(no network?) |" in text
    assert "| confluent-kafka loop (same rules) | not measured: peer-loop exited 1" in text
    assert math.isnan(ratios(result)["topology[exactly_once] / Quix Streams (same rules)"])
    assert not any(g["met"] for g in goals(result) if "same rules" in g["goal"])


def test_quix_venv_that_cannot_be_built_gives_the_reason_and_no_venv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No package index (as with no network): the bench is told why and goes on without Quix."""
    from bench import peer_venv

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setattr(peer_venv, "quix_requirements", lambda: ["quixstreams==3.28.*"])
    got = peer_venv.ensure_quix_venv(tmp_path / "quix", timeout_s=120)
    assert got.python is None
    assert got.reason.startswith(f"could not build {tmp_path / 'quix'} (no network?)")
    assert "quixstreams" in got.reason
    assert not (tmp_path / "quix").exists()  # no half-built venv taken for a finished one


def test_reservation_step_bench_times_new_holds_on_a_sku_of_the_given_size() -> None:
    from bench import reservation_step
    from pipeline.reservations import ReservationOutputs, ReservationRules, SupplierView, decide

    row = reservation_step.measure(50, 10, 40)
    assert row["holds_and_answers"] == 50 and row["us_per_command"] > 0
    # The state it encodes is the one with the 50 holds (each with its answer).
    state = decide(None, reservation_step.SKU,
                   [(reservation_step._hold(n), reservation_step.T0 + n) for n in range(50)],
                   SupplierView(total=10**9), ReservationRules(), ReservationOutputs())
    assert len(state["holds"]) == len(state["answers"]) == 50
    from schemas.codec import codec_for
    assert row["state_bytes"] == len(codec_for("ReservationState").encode(state))
