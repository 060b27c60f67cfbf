"""Exactly-once delivery: idempotent producers, transactions, read_committed (docs/transactions.md).

Kept free of imports on purpose: `broker.log.log` imports `broker.transactions.producer_state`
(pure), and the trio-side modules of this package import the log; importing the package must not
pull those in.
"""
