"""Share groups: topics read as queues (KIP-932). See docs/queues.md."""
