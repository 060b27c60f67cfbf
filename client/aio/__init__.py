"""The trio-native client: `Producer`, `Consumer`, `ShareConsumer`, `AdminClient`, each an async
context manager.

    async with Producer("127.0.0.1:9092", acks=1) as producer:
        metadata = await producer.send_and_wait("events", b"hello")

The blocking classes in `client` wrap these; see docs/client.md.
"""

from client.aio.admin import AdminClient
from client.aio.consumer import Consumer
from client.aio.producer import Producer
from client.aio.share_consumer import AcknowledgementStateError, ShareConsumer

__all__ = ["AcknowledgementStateError", "AdminClient", "Consumer", "Producer", "ShareConsumer"]
