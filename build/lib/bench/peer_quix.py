"""Peer baseline: stockflow's delta topology in Quix Streams (RocksDB state, its checkpoints).

    .stockflow/bench-venvs/quix/bin/python -m bench.peer_quix --topic T --count N \
        --prefix P --state-dir DIR --result out.json

Runs in its own venv (bench/peer_venv.py: Quix Streams pins its own confluent-kafka). One
StreamingDataFrame: the raw delta -> bench.peer_logic.DeltaStep (stockflow's decode,
validate_delta, event_id memory, decide) over the key's state in Quix's RocksDB store
(values Avro StockState, as in stockflow's `stock` table) ->
each output (StockUpdate, ResyncRequest, DeadLetter) to its topic, Avro-encoded by
stockflow's codec. Quix commits at each checkpoint (`--commit-interval`, stockflow's
`commit_interval_s`): outputs and the state's changelog records produced, offsets committed
(in one transaction with exactly-once), then the state written to RocksDB. Writes
bench.peer_logic.Progress's report to `--result` when it has handled N records.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

from bench.peer_logic import GUARANTEES, RECORD_OF, DeltaStep, Progress, write_result
from schemas.codec import codec_for

QUIX_GUARANTEE = {"exactly_once": "exactly-once", "at_least_once": "at-least-once"}
OUTPUTS = {"update": "stock-updates", "dead_letter": "deadletter", "resync": "resync"}
STATE_KEY = b"stock"  # bytes: Quix would run a str key through the value serializer


def main() -> None:
    """Build the Quix application from the arguments and run it until N records are handled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="prefix of the output topics and group")
    parser.add_argument("--guarantee", choices=GUARANTEES, default="exactly_once")
    parser.add_argument("--commit-interval", type=float, default=0.1)
    parser.add_argument("--dedup-ttl-s", type=int, default=7 * 24 * 3600)
    parser.add_argument("--linger-ms", type=int, default=10)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()

    from quixstreams import Application, message_context
    from quixstreams.models.serializers import Serializer
    from quixstreams.models.topics import TopicConfig
    from quixstreams.state.rocksdb import RocksDBOptions

    class StockflowAvro(Serializer):
        """The output's record, encoded by stockflow's single-object Avro codec."""

        def __init__(self, record_name: str) -> None:
            super().__init__()
            self.codec = codec_for(record_name)

        def __call__(self, value: Any, ctx: Any) -> bytes:
            return self.codec.encode(value[2])

    state_codec = codec_for("StockState")
    app = Application(
        broker_address=args.broker, consumer_group=f"{args.prefix}group",
        auto_offset_reset="earliest", processing_guarantee=QUIX_GUARANTEE[args.guarantee],
        commit_interval=args.commit_interval,
        state_dir=str(args.state_dir / uuid.uuid4().hex[:8]), loglevel="WARNING",
        # State values as stockflow's table holds them: Avro StockState, not Quix's JSON.
        rocksdb_options=RocksDBOptions(dumps=state_codec.encode, loads=state_codec.decode),
        # read_committed as stockflow's consumers (Quix sets it itself for exactly-once).
        consumer_extra_config={"isolation.level": "read_committed"},
        producer_extra_config={"linger.ms": args.linger_ms, "partitioner": "murmur2_random"},
    )
    config = TopicConfig(num_partitions=args.partitions, replication_factor=1)
    deltas = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {kind: app.topic(f"{args.prefix}{name}", key_serializer="bytes",
                               value_serializer=StockflowAvro(RECORD_OF[kind]), config=config)
               for kind, name in OUTPUTS.items()}

    step = DeltaStep(args.topic, args.dedup_ttl_s * 1000)
    progress = Progress(args.count)
    done: dict[str, Any] = {}

    def process(value: bytes, key: bytes, timestamp: int, _headers: Any,
                state: Any) -> list[Any]:
        ctx = message_context()
        res = step(value, key, timestamp, state.get(STATE_KEY), ctx.partition, ctx.offset)
        if res.state is not None:
            state.set(STATE_KEY, res.state)
        progress.add(res.outcome)
        if progress.count == args.count and not done:
            done["result"] = progress.result()
            app.stop()
        return res.emits

    sdf = app.dataframe(deltas)
    sdf = sdf.apply(process, stateful=True, metadata=True, expand=True)
    sdf.to_topic(lambda value, *_: outputs[value[0]], key=lambda value: value[1])

    t0 = time.perf_counter()
    app.run()
    result = done.get("result") or progress.result(incomplete=True)
    import quixstreams

    result.update({
        "what": f"Quix Streams {quixstreams.__version__}, same rules, RocksDB state, "
                f"{QUIX_GUARANTEE[args.guarantee]}, checkpoint every {args.commit_interval} s",
        "guarantee": args.guarantee, "quixstreams": quixstreams.__version__,
        "seconds_with_startup_and_close": time.perf_counter() - t0,
        "incomplete": progress.count < args.count})
    write_result(args.result, result)


if __name__ == "__main__":
    main()
