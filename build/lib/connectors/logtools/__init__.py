"""The tools that work over the log (inventory.deltas): replay, rebuild, verify and trace.

- `fold`: LogFold, the worker's validate -> dedup -> apply -> aggregate chain over raw log
  records, with the state in plain dicts (pure, no I/O).
- `log_reader`: positions (time, beginning, partition:offset) and a batched reader of the log
  with its own manual assignment (never the worker's consumer group).
- `runner`: the replay (window, filters, checkpoint, Ctrl-C) into Cassandra and Redis.
- `compare`: what verify and dry-run compare (expected state vs Cassandra, Redis, tables).
- `verification`: `stockflow verify`, the log folded and compared with Cassandra and Redis.
- `rebuild`: the full rebuild (worker tables via their changelogs, group offsets).
- `trace`: one event's path through the rules, the tables and the stores (`stockflow trace`);
  `trace_spans`: its recorded OpenTelemetry spans.
"""
