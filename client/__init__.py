"""The Python SDK of pybroker: blocking `Producer`, `Consumer`, `ShareConsumer`, `AdminClient`.

    from client import Producer, Consumer, TopicPartition
    with Producer("127.0.0.1:9092") as producer:
        producer.send("events", b"hello").result()

The trio-native versions are in `client.aio`; errors are in `client.errors`; an embedded broker
for tests is in `client.embedded`. See docs/client.md.
"""

from client.accumulator import RecordFuture
from client.aio.share_consumer import AcknowledgementStateError
from client.blocking import AdminClient, Consumer, Producer, ShareConsumer
from client.bulk import SendManyFuture, SendManyResult
from client.consumer_records import ConsumerRecords
from client.errors import (
    InvalidTxnStateError,
    ProducerFencedError,
    TopicAlreadyExistsError,
    TransactionAbortedError,
)
from client.types import (
    ClusterStatus,
    ConsumerGroupMetadata,
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    RecordMetadata,
    ShareGroupDescription,
    ShareRecord,
    TopicDescription,
    TopicPartition,
)

__all__ = [
    "AcknowledgementStateError",
    "AdminClient",
    "ClusterStatus",
    "Consumer",
    "ConsumerGroupMetadata",
    "ConsumerRecord",
    "ConsumerRecords",
    "InvalidTxnStateError",
    "OffsetAndMetadata",
    "OffsetAndTimestamp",
    "Producer",
    "ProducerFencedError",
    "RecordFuture",
    "RecordMetadata",
    "SendManyFuture",
    "SendManyResult",
    "ShareConsumer",
    "ShareGroupDescription",
    "ShareRecord",
    "TopicAlreadyExistsError",
    "TopicDescription",
    "TopicPartition",
    "TransactionAbortedError",
]
