"""This broker side by side with NATS JetStream and Redis Streams (issue 15): `python -m
benchmarks.compare`. See docs/benchmarks-compare.md.

Modules:
- `cli`: arguments, the round-robin schedule of runs (every system alone on the machine in its
  turn, started before and stopped after), and the output files;
- `report`: pure: per-run measurements -> one row per system and workload, the pybroker/peer
  ratios, the issue's targets, the JSON document; and the rich table and the matplotlib chart;
- `measure`: what every system's driver shares: the workload's shape, the latency stamp and
  pacing, the CPU meter;
- `servers`: a peer server as a child process (nats-server, redis-server), stopped on exit;
- `system_pybroker`, `system_nats`, `system_redis`: each system driven by its own Python client.
"""
