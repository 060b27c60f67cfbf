"""Goal (issue 17): `broker-cli groups delete` racing reset-offsets and a consumer's commits on the
same Empty group never takes the coordinator down: every delete and every commit gets an answer
(success or a documented error), and the broker keeps serving groups afterwards."""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable

from client import AdminClient, Consumer, OffsetAndMetadata, TopicPartition
from client.embedded import EmbeddedBroker
from wire.error_codes import BrokerError, ErrorCode

GROUP = "racing"
TOPIC = "race"
RACE_S = 4.0
# The documented answers (docs/consumer-groups.md, DeleteGroups): a delete of a group already
# deleted (or being deleted) gets GROUP_ID_NOT_FOUND; a commit while the group is Dead gets
# COORDINATOR_NOT_AVAILABLE (retriable; the consumer retries it a few times first).
DELETE_ERRORS = {ErrorCode.GROUP_ID_NOT_FOUND}
COMMIT_ERRORS = {ErrorCode.COORDINATOR_NOT_AVAILABLE}


class Outcomes:
    """Per kind of call: how many were made, and how each was answered (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.answers: dict[str, collections.Counter[ErrorCode]] = collections.defaultdict(
            collections.Counter
        )
        self.unexpected: list[tuple[str, BaseException]] = []

    def run(self, kind: str, call: Callable[[], None], allowed: set[ErrorCode]) -> None:
        with self.lock:
            self.calls[kind] += 1
        try:
            call()
        except BrokerError as exc:
            with self.lock:
                self.answers[kind][exc.code] += 1
                if exc.code not in allowed:
                    self.unexpected.append((kind, exc))
        except Exception as exc:  # a timeout or a lost connection: no answer
            with self.lock:
                self.unexpected.append((kind, exc))
        else:
            with self.lock:
                self.answers[kind][ErrorCode.NONE] += 1


def test_deletes_racing_commits_are_all_answered_and_the_broker_survives(
    group_broker: EmbeddedBroker,
) -> None:
    bootstrap = group_broker.bootstrap
    with AdminClient(bootstrap) as admin:
        admin.create_topic(TOPIC, 2)
    outcomes = Outcomes()
    stop = threading.Event()

    def deleter() -> None:
        with AdminClient(bootstrap) as admin:
            while not stop.is_set():
                outcomes.run("delete", lambda: admin.delete_group(GROUP), DELETE_ERRORS)

    def resetter() -> None:  # `groups reset-offsets`: a commit from outside the group
        with AdminClient(bootstrap) as admin:
            offset = 0
            while not stop.is_set():
                offset += 1
                offsets = {TopicPartition(TOPIC, 0): offset, TopicPartition(TOPIC, 1): offset}
                reset = functools.partial(admin.alter_consumer_group_offsets, GROUP, offsets)
                outcomes.run("reset", reset, COMMIT_ERRORS)

    def committer() -> None:  # a manually assigned consumer committing to the (Empty) group
        with Consumer(bootstrap, group_id=GROUP, enable_auto_commit=False) as consumer:
            consumer.assign([(TOPIC, 1)])
            offset = 0
            while not stop.is_set():
                offset += 1
                committing = {TopicPartition(TOPIC, 1): offset}
                outcomes.run(
                    "commit", functools.partial(consumer.commit, committing), COMMIT_ERRORS
                )

    threads = [threading.Thread(target=run, daemon=True) for run in (deleter, resetter, committer)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + RACE_S
    while time.monotonic() < deadline and all(t.is_alive() for t in threads):
        stop.wait(0.1)  # the race runs for RACE_S seconds (or until a worker dies)
    stop.set()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a worker is stuck: some call was never answered"

    assert not outcomes.unexpected, outcomes.unexpected
    for kind in ("delete", "reset", "commit"):
        answered = sum(outcomes.answers[kind].values())
        assert answered == outcomes.calls[kind] > 0, (kind, outcomes.calls, outcomes.answers)
    # The race really happened: deletes removed groups the commits had (re)created.
    assert outcomes.answers["delete"][ErrorCode.NONE] > 0, outcomes.answers
    assert outcomes.answers["reset"][ErrorCode.NONE] > 0, outcomes.answers
    assert outcomes.answers["commit"][ErrorCode.NONE] > 0, outcomes.answers

    # The broker still serves: the coordinator never failed, and groups work as before.
    assert group_broker.running
    assert "the group coordinator failed" not in group_broker.log_tail(10_000)
    with AdminClient(bootstrap) as admin:
        admin.alter_consumer_group_offsets(GROUP, {TopicPartition(TOPIC, 0): 42})
        described = admin.describe_group(GROUP)
        assert described.state == "Empty"
        committed = {o.partition: o.committed_offset for o in described.offsets}
        assert committed[0] == 42, described
        admin.delete_group(GROUP)
    with Consumer(bootstrap, group_id="after-the-race", enable_auto_commit=False) as consumer:
        consumer.assign([(TOPIC, 0)])
        consumer.commit({TopicPartition(TOPIC, 0): 7})
        assert consumer.committed((TOPIC, 0)) == OffsetAndMetadata(7)
