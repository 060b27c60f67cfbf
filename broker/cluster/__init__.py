"""Cluster membership for a broker (issue 5): the controller's metadata log, the partition
replicas as Raft groups, and `ClusterNode`, which runs them in one trio nursery.

`controller_service.py` (the metadata log's shell), `replicas.py` (one Raft group per hosted
partition) and `node.py` (storage, peer transport, registration) are trio shells over the pure
cores in `broker/raft` and `broker/controller`. docs/cluster.md describes the design and what
remains to wire it into `broker serve`.
"""
