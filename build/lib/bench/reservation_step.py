"""The reservation step's cost per command against the size of a SKU's state (a hot SKU).

A flash sale puts thousands of holds and answers on one platform SKU: every shopper's hold
is remembered under its Idempotency-Key (SOLD_OUT answers too, up to
`reservation_max_answers`), and every granted unit is a hold until it expires. This times
`pipeline.reservations.decide` on one SKU that already has N active holds and N answers,
deciding batches of new holds (one call per batch, as the agent decides a poll), and the
Avro encoding of the state that each commit writes to the table's changelog. No broker: the
pure step only, one process.

    python -m bench.reservation_step [--sizes 10,100,1000,10000] [--batch 100] [--commands 3000]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pipeline.reservations import ReservationOutputs, ReservationRules, SupplierView, decide
from schemas.codec import codec_for

SKU = "HOT-1"
T0 = 1_700_000_000_000


def _hold(n: int) -> dict[str, Any]:
    return {"command_id": f"c{n}", "kind": "HOLD", "platform_sku": SKU,
            "reservation_id": f"r{n}", "quantity": 1, "ttl_ms": 0,
            "idempotency_key": f"k{n}", "requested_at": 0}


def measure(size: int, batch: int, commands: int) -> dict[str, Any]:
    rules = ReservationRules(max_answers=max(10_000, size + commands))
    supplier = SupplierView(total=10**9, best_supplier="s1", best_sku="A-1",
                            snapshot_at={"s1": T0 - 1})
    state = decide(None, SKU, [(_hold(n), T0 + n) for n in range(size)], supplier, rules,
                   ReservationOutputs())
    encode = codec_for("ReservationState").encode
    started = time.perf_counter()
    encoded = encode(state)
    encode_ms = (time.perf_counter() - started) * 1000
    n = size
    started = time.perf_counter()
    while n < size + commands:
        run = [(_hold(i), T0 + i) for i in range(n, min(n + batch, size + commands))]
        state = decide(state, SKU, run, supplier, rules, ReservationOutputs())
        n += len(run)
    elapsed = time.perf_counter() - started
    return {"holds_and_answers": size, "us_per_command": round(elapsed / commands * 1e6, 1),
            "commands_per_s": round(commands / elapsed),
            "state_bytes": len(encoded), "encode_ms_per_commit": round(encode_ms, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000",
                        help="active holds (each with its answer) already on the SKU")
    parser.add_argument("--batch", type=int, default=100, help="commands per decide call")
    parser.add_argument("--commands", type=int, default=3000, help="commands timed per size")
    args = parser.parse_args(argv)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(size, args.batch, args.commands)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"batch": args.batch, "commands": args.commands, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
