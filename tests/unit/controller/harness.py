"""Test helpers: a metadata log in a list, applied to a state machine the way the driver will."""

from __future__ import annotations

from collections.abc import Sequence

from broker.controller.records import BrokerState, MetadataRecord, decode_record, encode_record
from broker.controller.state import ControllerStateMachine


def topic_id(number: int) -> str:
    """A valid, distinct topic id per number (the shell uses uuid4().hex)."""
    return f"{number:032x}"


class MetadataLog:
    """Commands go through prepare, their records through encode/decode, then apply: the path a
    committed metadata-log entry takes on every broker. `log` keeps every committed record."""

    def __init__(self, machine: ControllerStateMachine | None = None) -> None:
        self.machine = machine if machine is not None else ControllerStateMachine(validate=True)
        self.log: list[tuple[int, bytes]] = []
        # The same records as the objects that were proposed (before encoding).
        self.originals: list[tuple[int, MetadataRecord]] = []
        self.next_index = self.machine.applied_index + 1

    def commit(self, records: Sequence[MetadataRecord]) -> None:
        for record in records:
            payload = encode_record(record)
            index = self.next_index
            # Offsets in the metadata log have gaps (control batches); leave one now and then.
            self.next_index += 1 if index % 5 else 2
            self.log.append((index, payload))
            self.originals.append((index, record))
            self.machine.apply(decode_record(payload), index)

    def add_brokers(self, *node_ids: int, active: bool = True) -> None:
        for node_id in node_ids:
            self.commit(
                self.machine.prepare_register_broker(node_id, "127.0.0.1", 9000 + node_id, 1)
            )
            if active:
                self.set_state(node_id, BrokerState.ACTIVE)

    def set_state(self, node_id: int, state: BrokerState) -> None:
        info = self.machine.broker(node_id)
        assert info is not None
        self.commit(
            self.machine.prepare_set_broker_state(node_id, state, broker_epoch=info.broker_epoch)
        )

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, *, number: int = 1, **configs
    ) -> None:
        self.commit(
            self.machine.prepare_create_topic(
                name, partitions, replication_factor, configs, topic_id=topic_id(number)
            )
        )

    def replay(self) -> ControllerStateMachine:
        """A fresh state machine that applied the same committed records."""
        fresh = ControllerStateMachine(validate=True)
        for index, payload in self.log:
            fresh.apply(decode_record(payload), index)
        return fresh
