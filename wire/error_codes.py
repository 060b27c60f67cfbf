"""The closed set of errors that cross the wire, shared by broker and client.

Every error a client can receive is an `ErrorCode`: a stable name, a stable wire id (never reused,
never renumbered) and a `retriable` flag that tells the client whether the same request may succeed
later without a change on its side (a new leader, a finished rebalance). `BrokerError` carries a
code and a message a person can act on; it is the one exception type handlers turn into a wire
error.

Rules: add codes at the end with a fresh id; never change an existing code's id or retriability.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """A wire error: `value` is `(wire_id, retriable)`."""

    NONE = (0, False)
    UNKNOWN_SERVER_ERROR = (1, False)
    CORRUPT_MESSAGE = (2, True)
    MESSAGE_TOO_LARGE = (3, False)
    INVALID_RECORD = (4, False)
    UNSUPPORTED_COMPRESSION = (5, False)
    OFFSET_OUT_OF_RANGE = (6, False)
    UNKNOWN_TOPIC = (7, True)
    UNKNOWN_PARTITION = (8, False)
    TOPIC_ALREADY_EXISTS = (9, False)
    INVALID_TOPIC = (10, False)
    INVALID_PARTITIONS = (11, False)
    INVALID_REPLICATION_FACTOR = (12, False)
    INVALID_CONFIG = (13, False)
    INVALID_REQUEST = (14, False)
    UNSUPPORTED_VERSION = (15, False)
    NOT_LEADER = (16, True)
    LEADER_NOT_AVAILABLE = (17, True)
    NOT_ENOUGH_REPLICAS = (18, True)
    REQUEST_TIMED_OUT = (19, True)
    NOT_CONTROLLER = (20, True)
    BROKER_NOT_AVAILABLE = (21, True)
    KAFKA_STORAGE_ERROR = (22, True)
    OUT_OF_ORDER_SEQUENCE = (23, False)
    DUPLICATE_SEQUENCE = (24, False)
    INVALID_PRODUCER_EPOCH = (25, False)
    UNKNOWN_PRODUCER_ID = (26, False)
    COORDINATOR_NOT_AVAILABLE = (27, True)
    NOT_COORDINATOR = (28, True)
    COORDINATOR_LOAD_IN_PROGRESS = (29, True)
    ILLEGAL_GENERATION = (30, False)
    UNKNOWN_MEMBER_ID = (31, False)
    REBALANCE_IN_PROGRESS = (32, False)
    INVALID_SESSION_TIMEOUT = (33, False)
    GROUP_NOT_EMPTY = (34, False)
    GROUP_ID_NOT_FOUND = (35, False)
    FENCED_INSTANCE_ID = (36, False)
    UNAUTHORIZED = (37, False)
    THROTTLED = (38, True)
    POLICY_VIOLATION = (39, False)
    RECORD_LIST_TOO_LARGE = (40, False)
    GROUP_MAX_SIZE_REACHED = (41, False)
    INCONSISTENT_GROUP_PROTOCOL = (42, False)
    INVALID_GROUP_ID = (43, False)
    OFFSET_METADATA_TOO_LARGE = (44, False)
    # A broker's heartbeat names a registration the controller no longer has: register again.
    STALE_BROKER_EPOCH = (45, True)
    # Transactions and idempotence (docs/transactions.md).
    # A transactional producer with this id was started again (or the coordinator aborted this
    # transaction and bumped the epoch): this instance is a zombie and must stop.
    PRODUCER_FENCED = (46, False)
    # A transactional call made out of order (e.g. EndTxn with no transaction going on).
    INVALID_TXN_STATE = (47, False)
    # The producer id does not belong to this transactional id.
    INVALID_PRODUCER_ID_MAPPING = (48, False)
    # The previous transaction of this id is still completing (markers being written): retry.
    CONCURRENT_TRANSACTIONS = (49, True)
    # The coordinator aborted the transaction (it ran past its timeout).
    TRANSACTION_ABORTED = (50, False)
    # Offsets of a transaction still completing cover this partition: fetch them again shortly.
    UNSTABLE_OFFSET_COMMIT = (51, True)
    # A transaction marker from a coordinator of an older epoch than one already seen.
    TRANSACTION_COORDINATOR_FENCED = (52, False)
    # The partition has no state for this producer id (expired, or never written).
    TRANSACTIONAL_ID_NOT_FOUND = (53, False)
    # Share groups (docs/queues.md): an acknowledgement names records this member does not hold
    # (never delivered to it, already acknowledged, or its lock expired and they went to another).
    INVALID_RECORD_STATE = (54, False)
    # Security: authentication (docs/security.md). Ids from 60, leaving room for others' blocks.
    # The login failed: wrong user name or password (the connection is closed).
    SASL_AUTHENTICATION_FAILED = (60, False)
    # The client asked for a SASL mechanism this broker does not offer.
    UNSUPPORTED_SASL_MECHANISM = (61, False)
    # A request out of the SASL sequence: any other request before the login, a second login.
    ILLEGAL_SASL_STATE = (62, False)
    # The user (or its credential for that mechanism) does not exist.
    RESOURCE_NOT_FOUND = (63, False)
    # A SCRAM credential the broker does not accept (iterations out of range, wrong key size).
    UNACCEPTABLE_CREDENTIAL = (64, False)
    # Authorization (docs/security.md): the principal lacks an ACL for the resource named in the
    # message; an operator must grant it (`broker-cli acls add`), so retrying never helps.
    TOPIC_AUTHORIZATION_FAILED = (55, False)
    GROUP_AUTHORIZATION_FAILED = (56, False)
    CLUSTER_AUTHORIZATION_FAILED = (57, False)
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = (58, False)

    @property
    def wire_id(self) -> int:
        return self.value[0]

    @property
    def retriable(self) -> bool:
        return self.value[1]

    @classmethod
    def from_wire(cls, wire_id: int) -> ErrorCode:
        """The code for `wire_id`; an id we do not know maps to UNKNOWN_SERVER_ERROR."""
        return _BY_WIRE_ID.get(wire_id, cls.UNKNOWN_SERVER_ERROR)


_BY_WIRE_ID: dict[int, ErrorCode] = {code.wire_id: code for code in ErrorCode}
assert len(_BY_WIRE_ID) == len(ErrorCode), "wire ids must be unique"


class BrokerError(Exception):
    """An expected, named failure: what went wrong (`code`) and what to do about it (`message`)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        assert code is not ErrorCode.NONE
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        return self.code.retriable
