"""Producer ids: unique across a cluster, allocated without a round trip to anyone.

An idempotent producer's id names its sequence numbers on every partition it writes, so two live
producers must never share one. Kafka hands out blocks of ids from its controller (KIP-730); here
the broker's node id is the high part of the id and a counter kept in this broker's LMDB is the low
part, reserved a block at a time: the block's end is made durable before any id of it is handed
out, so a crash (which forgets the counter's in-memory position) skips the rest of the block
instead of handing an id out twice.

Known limit (docs/transactions.md): ids are unique only while a broker keeps its LMDB. A broker
whose metadata store is wiped and recreated under the same node id could hand out ids again; the
partitions would then treat the new producer as the old one's next epoch or refuse it with
OUT_OF_ORDER_SEQUENCE, which the client recovers from with a new id.
"""

from __future__ import annotations

from typing import Any, Final

from broker.kvstore import KeySpace

# Ids per reservation: one durable LMDB write per this many InitProducerId calls.
BLOCK_SIZE: Final = 1_000
# Bits of the id below the node id: 2**32 ids per broker; a node id (< 2**31) fits above them.
NODE_SHIFT: Final = 32
NEXT_BLOCK_KEY: Final = b"producer_id_next_block"


class ProducerIdsExhaustedError(RuntimeError):
    """This broker has handed out 2**32 producer ids: it cannot make a unique one any more."""


class ProducerIdAllocator:
    """Hands out producer ids `node_id << 32 | n`. `store` None (tests): memory only."""

    def __init__(self, store: Any, node_id: int) -> None:
        assert 0 <= node_id < 2**31, node_id
        self._store = store
        self._node_id = node_id
        self._next = 0
        self._block_end = 0
        if store is not None:
            reserved = store.get_obj(KeySpace.PRODUCERS, NEXT_BLOCK_KEY)
            self._next = self._block_end = int(reserved or 0)

    def allocate(self) -> int:
        if self._next >= self._block_end:
            self._reserve()
        producer_id = (self._node_id << NODE_SHIFT) | self._next
        self._next += 1
        return producer_id

    def _reserve(self) -> None:
        end = self._block_end + BLOCK_SIZE
        if end > 2**NODE_SHIFT:
            raise ProducerIdsExhaustedError(
                f"broker {self._node_id} has allocated all of its 2**{NODE_SHIFT} producer ids"
            )
        if self._store is not None:
            self._store.put_obj(KeySpace.PRODUCERS, NEXT_BLOCK_KEY, end, durable=True)
        self._next = self._block_end
        self._block_end = end
