"""`LeaderWait` / `LeaderPoll` (client/aio/leader_wait.py): a batch whose leader moved is due again
as soon as the metadata names another leader, not after its retry backoff."""

from __future__ import annotations

from client.accumulator import ProducerBatch
from client.aio.leader_wait import LEADER_POLL_INITIAL_S, LeaderPoll, LeaderWait


def requeued(partition: int) -> ProducerBatch:
    batch = ProducerBatch("t", partition, created_at=0.0)
    batch.retry_at = 123.0  # the backoff fallback
    return batch


def test_a_batch_is_released_when_its_partition_has_another_leader() -> None:
    wait = LeaderWait()
    moved, stale = requeued(0), requeued(1)
    wait.add(moved, failed_leader=1)
    wait.add(stale, failed_leader=1)
    leaders = {0: None, 1: 1}  # partition 0 is electing; partition 1's metadata is stale
    assert wait.release("t", lambda _topic, p: leaders[p]) == 0
    assert moved.retry_at == stale.retry_at == 123.0 and wait.waiting("t")
    leaders = {0: 2, 1: 1}
    assert wait.release("t", lambda _topic, p: leaders[p]) == 1
    assert moved.retry_at == 0.0 and stale.retry_at == 123.0
    leaders = {0: 2, 1: 3}
    assert wait.release("t", lambda _topic, p: leaders[p]) == 1
    assert stale.retry_at == 0.0 and not wait.waiting("t")


def test_a_batch_that_had_no_leader_goes_to_any_leader_and_completed_ones_are_forgotten() -> None:
    wait = LeaderWait()
    leaderless, finished = requeued(0), requeued(1)
    wait.add(leaderless, failed_leader=None)
    wait.add(finished, failed_leader=1)
    finished.complete(-1, RuntimeError("delivery timeout"))
    assert wait.release("t", lambda _topic, _p: 1) == 1
    assert leaderless.retry_at == 0.0 and not wait.waiting("t")


def test_the_poll_backs_off_exponentially_up_to_its_cap() -> None:
    poll = LeaderPoll(max_s=0.1)
    delays = [poll.next_delay() for _ in range(5)]
    assert delays[0] == LEADER_POLL_INITIAL_S
    assert delays == sorted(delays) and delays[-1] == 0.1
