"""What `/metrics` reads beyond `broker/metrics.py`'s counters: scrape-time views of the broker.

- `scrape.py`: run a function in the trio thread when Prometheus scrapes, so collectors read the
  broker's state consistently and an idle broker spends nothing on metrics between scrapes.
- `raft_metrics.py`: per-broker aggregates of the hosted Raft groups (roles, terms, lags, elections,
  snapshots, quiescent groups) and the latencies the drivers measure (fsync, propose to commit).
- `cluster_metrics.py`: the controller's state as this broker sees it, and what the controller
  and log cleaner report when present (reassignments, compaction).

Cores never import prometheus: these modules read their `statistics()` and plain attributes.
"""
