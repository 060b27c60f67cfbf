"""What the broker and the client both speak: framing, connections and their transport errors.

Neither side owns this package; both build on it, so the layers read top to bottom:
`wire` <- `broker`, `wire` <- `client`. It imports neither (tests/unit/test_layering.py checks).

- `wire.framing`: the sans-I/O frame codec (`FrameConnection`, h11 style), handshake constants and
  frame limits. Pure: no trio, no sockets, no clocks.
- `wire.connection`: its trio shell, one pipelined TCP connection to one broker
  (`open_broker_connection`), used by the SDK and by brokers calling their peers.
- `wire.errors`: the failures a requester meets on a connection (`ClientError` and its
  transport subclasses), re-exported by `client.errors`.
- `wire.scram`: the pure SASL SCRAM core (both sides, credentials); `wire.sasl_client`: the
  login a connection runs after its handshake (docs/security.md).
"""
