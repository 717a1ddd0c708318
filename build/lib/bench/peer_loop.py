"""Peer baseline: a plain confluent-kafka consume-transform-produce loop with stockflow's rules.

    python -m bench.peer_loop --topic T --count N --prefix P --result out.json

Per batch of up to `--batch` records (`Consumer.consume`): each delta through
bench.peer_logic.DeltaStep (stockflow's validate_delta and decide) against a dict of
per-key state; a StockUpdate / ResyncRequest / DeadLetter produced per output; at the end
of the batch one StockState changelog record per key the batch changed, then the input
offsets. Exactly-once: all of it in one transaction of one transactional producer
(`send_offsets_to_transaction` with the consumer's group metadata, KIP-447), committed per
batch. At-least-once: the producer flushed, then the offsets committed.

Output topics are `P` + stock-updates, deadletter, resync, stock-changelog (created here
with the input's partition count). Writes bench.peer_logic.Progress's report to `--result`
when it has handled N records, then exits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.peer_logic import (
    DEAD_LETTER,
    GUARANTEES,
    RECORD_OF,
    RESYNC,
    UPDATE,
    DeltaStep,
    Progress,
    write_result,
)
from schemas.codec import codec_for

OUTPUTS = {UPDATE: "stock-updates", DEAD_LETTER: "deadletter", RESYNC: "resync"}
CHANGELOG = "stock-changelog"


def create_topics(admin: Any, names: dict[str, dict[str, str]], partitions: int) -> None:
    """Create the loop's output topics (an existing one is fine: a rerun with the same prefix)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config)
                                   for name, config in names.items()])
    for fut in futures.values():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def run(broker: str, topic: str, count: int, prefix: str, *, guarantee: str = "exactly_once",
        batch: int = 500, dedup_ttl_s: int = 7 * 24 * 3600, linger_ms: int = 10,
        timeout_s: float = 600) -> dict[str, Any]:
    """Consume `count` records of `topic` from the start and process them; the report."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {GUARANTEES}, got {guarantee!r}")
    eos = guarantee == "exactly_once"
    admin = AdminClient({"bootstrap.servers": broker})
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    out_topics = {kind: f"{prefix}{name}" for kind, name in OUTPUTS.items()}
    changelog = f"{prefix}{CHANGELOG}"
    create_topics(admin, {**{t: {} for t in out_topics.values()},
                          changelog: {"cleanup.policy": "compact"}}, partitions)

    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"{prefix}group",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    producer_conf: dict[str, Any] = {"bootstrap.servers": broker, "linger.ms": linger_ms,
                                     "acks": "all", "enable.idempotence": True,
                                     # Same partitioner as every stockflow producer.
                                     "partitioner": "murmur2_random"}
    if eos:
        producer_conf["transactional.id"] = f"{prefix}producer"
    producer = Producer(producer_conf)
    if eos:
        producer.init_transactions(30)
    consumer.subscribe([topic])

    step = DeltaStep(topic, dedup_ttl_s * 1000)
    codecs = {kind: codec_for(name) for kind, name in RECORD_OF.items()}
    state_codec = codec_for("StockState")
    state: dict[bytes | None, dict[str, Any]] = {}
    progress = Progress(count)
    batches = 0

    def send(out_topic: str, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                producer.produce(out_topic, value, key)
                return
            except BufferError:  # local queue full: let librdkafka deliver some first
                producer.poll(0.05)

    deadline = time.monotonic() + timeout_s
    try:
        while progress.count < count and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=batch, timeout=0.5)
            if not msgs:
                continue
            if eos:
                producer.begin_transaction()
            changed: set[bytes | None] = set()
            next_offsets: dict[int, int] = {}
            for msg in msgs:
                if msg.error():
                    continue
                key, partition, offset = msg.key(), msg.partition(), msg.offset()
                assert partition is not None and offset is not None  # a consumed record
                res = step(msg.value(), key, msg.timestamp()[1], state.get(key), partition,
                           offset)
                if res.state is not None:
                    state[key] = res.state
                    changed.add(key)
                for kind, out_key, record in res.emits:
                    send(out_topics[kind], codecs[kind].encode(record), out_key)
                next_offsets[partition] = offset + 1
                progress.add(res.outcome)
            # The state's durability: one changelog record per key this batch changed.
            for key in changed:
                send(changelog, state_codec.encode(state[key]), key)
            offsets = [TopicPartition(topic, p, o) for p, o in next_offsets.items()]
            if eos:
                producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            else:
                producer.flush(30)
                if offsets:
                    consumer.commit(offsets=offsets, asynchronous=True)
            batches += 1
        return progress.result(
            what=f"confluent-kafka loop, batches of {batch}, stockflow's validate + decide, "
                 f"dict state + changelog, {'transactions' if eos else 'at-least-once'}",
            guarantee=guarantee, batches=batches, keys=len(state),
            incomplete=progress.count < count)
    finally:
        producer.flush(30)
        consumer.close()


def main() -> None:
    """Command-line entry point (the bench runs it as its own process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="prefix of the output topics")
    parser.add_argument("--guarantee", choices=GUARANTEES, default="exactly_once")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dedup-ttl-s", type=int, default=7 * 24 * 3600)
    parser.add_argument("--linger-ms", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    write_result(args.result, run(args.broker, args.topic, args.count, args.prefix,
                                  guarantee=args.guarantee, batch=args.batch,
                                  dedup_ttl_s=args.dedup_ttl_s, linger_ms=args.linger_ms,
                                  timeout_s=args.timeout_s))


if __name__ == "__main__":
    main()
