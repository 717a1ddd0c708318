"""librdkafka alone under a group coordinator's loss: the worker's consume-produce-commit loop
(its consumer and transactional producer settings, no pipeline) while the broker coordinating
its group is SIGKILLed and restarted; every Kafka call timed. Shows the fence of a static
member by its own id and send_offsets_to_transaction waiting past its timeout
(docs/reliability.md, case 2). On the 3-broker cluster (`stockflow stack up --brokers 3`):

    .venv/bin/python -m tests.reliability.coordinator_loss --membership static
    .venv/bin/python -m tests.reliability.coordinator_loss --membership dynamic
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import uuid
from typing import Any

from pipeline.settings import Settings
from pipeline.shell.stack import KafkaCluster

PARTITIONS = 6


def _out(t0: float, **fields: Any) -> None:
    print(json.dumps({"t": round(time.monotonic() - t0, 2), **fields}), flush=True)


def main() -> None:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--membership", choices=("static", "dynamic"), default="static")
    parser.add_argument("--offsets-timeout", type=float, default=60.0,
                        help="the timeout given to send_offsets_to_transaction (s)")
    parser.add_argument("--seconds", type=float, default=150.0, help="how long the loop runs")
    parser.add_argument("--down-s", type=float, default=23.0, help="how long the broker is down")
    parser.add_argument("--stuck-s", type=float, default=300.0,
                        help="a call under way this long is reported as never returning")
    args = parser.parse_args()

    cluster = KafkaCluster(Settings(), brokers=3)
    servers = cluster.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    source, sink, group = f"loss-in-{run}", f"loss-out-{run}", f"loss-{run}"
    t0 = time.monotonic()
    admin = AdminClient({"bootstrap.servers": servers})
    for fut in admin.create_topics([NewTopic(t, PARTITIONS, 3, config={
            "min.insync.replicas": "2"}) for t in (source, sink)]).values():
        fut.result()

    def feed() -> None:  # ~3,000 records/s for as long as the loop runs
        producer = Producer({"bootstrap.servers": servers, "linger.ms": 20, "log_level": 0})
        n = 0
        while True:
            for _ in range(300):
                while True:
                    try:
                        producer.produce(source, b"x" * 50, str(n).encode())
                        break
                    except BufferError:
                        producer.poll(0.05)
                n += 1
            producer.poll(0)
            time.sleep(0.1)

    threading.Thread(target=feed, daemon=True).start()
    conf: dict[str, Any] = {  # as topologies/runtime/worker.py _consumer_config
        "bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed", "partition.assignment.strategy": "range",
        "session.timeout.ms": 10_000, "heartbeat.interval.ms": 3_333,
        "max.poll.interval.ms": 600_000, "fetch.wait.max.ms": 50, "log_level": 3}
    if args.membership == "static":
        conf["group.instance.id"] = f"{group}-member"
    consumer = Consumer(conf)
    producer = Producer({"bootstrap.servers": servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 10,
                         "transactional.id": f"{group}-txn", "transaction.timeout.ms": 300_000,
                         "log_level": 3})
    producer.init_transactions(60)
    consumer.subscribe([source], on_assign=lambda c, p: _out(t0, event="assigned", n=len(p)),
                       on_revoke=lambda c, p: _out(t0, event="revoked", n=len(p)),
                       on_lost=lambda c, p: _out(t0, event="lost", n=len(p)))
    under_way: dict[str, Any] = {"call": None, "since": 0.0}
    longest: dict[str, float] = {}
    summary: dict[str, Any] = {"membership": args.membership, "fenced": False, "commits": 0}
    restarted = threading.Event()

    def call(name: str, fn: Any, *fn_args: Any) -> Any:
        under_way.update(call=name, since=time.monotonic())
        try:
            return fn(*fn_args)
        finally:
            took = time.monotonic() - under_way["since"]
            longest[name] = max(longest.get(name, 0.0), took)
            if took > 2:
                _out(t0, event="slow_call", call=name, seconds=round(took, 2))
            under_way["call"] = None

    def kill_coordinator() -> None:
        time.sleep(8)  # some commits first
        described = admin.describe_consumer_groups([group])[group].result(10)
        node = described.coordinator.id
        _out(t0, event="kill", node=node, controller=cluster.controller())
        cluster.stop_broker(node, signal.SIGKILL)
        summary["killed_at"] = round(time.monotonic() - t0, 2)
        time.sleep(args.down_s)
        cluster.start_broker(node)
        while cluster.live_brokers() < 3:
            time.sleep(0.5)
        _out(t0, event="broker_back")
        restarted.set()

    def watch() -> None:  # a call under way too long never returns: report it and end
        while True:
            time.sleep(5)
            name, since = under_way["call"], under_way["since"]
            if name and time.monotonic() - since > 5:
                _out(t0, event="under_way", call=name, seconds=round(time.monotonic() - since))
                if time.monotonic() - since > args.stuck_s:
                    restarted.wait(120)
                    _out(t0, event="summary", stuck=name, stuck_s=round(
                        time.monotonic() - since), **summary)
                    os._exit(3)

    threading.Thread(target=kill_coordinator, daemon=True).start()
    threading.Thread(target=watch, daemon=True).start()
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            msgs = call("consume", consumer.consume, 2000, 0.02)
            positions: dict[tuple[str, int], int] = {}
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._FATAL:
                        summary["fenced"] = "fenced" in str(err)
                        _out(t0, event="fatal", error=str(err))
                        return
                    continue
                positions[(msg.topic(), msg.partition())] = msg.offset() + 1
            if not positions:
                continue
            try:
                call("begin_transaction", producer.begin_transaction)
                for msg in msgs:
                    if msg.error() is None:
                        while True:
                            try:
                                producer.produce(sink, msg.value(), msg.key())
                                break
                            except BufferError:
                                producer.poll(0.05)
                call("send_offsets_to_transaction", producer.send_offsets_to_transaction,
                     [TopicPartition(t, p, o) for (t, p), o in positions.items()],
                     consumer.consumer_group_metadata(), args.offsets_timeout)
                call("commit_transaction", producer.commit_transaction, 120)
                summary["commits"] += 1
            except KafkaException as exc:
                _out(t0, event="transaction_error", error=str(exc.args[0]))
                call("abort_transaction", producer.abort_transaction, 60)
                for tp in call("committed", consumer.committed,
                               [TopicPartition(source, p) for p in range(PARTITIONS)], 30):
                    if tp.offset >= 0:
                        consumer.seek(tp)
    finally:
        summary["longest_s"] = {k: round(v, 2) for k, v in longest.items()}
        restarted.wait(120)  # leave the cluster with every broker running
        _out(t0, event="summary", **summary)


if __name__ == "__main__":
    main()
