"""RaftDriver ordering and bookkeeping, with the test playing the two peers of node 1.

Goals: no message of a Ready leaves before the fsync covering it completes, and `persisted`
follows that fsync; proposals that arrive during an fsync share the next one (group commit); a
refused send reports the peer unreachable; proposals settle by (index, term); ticks run on trio
time; cancellation during a real threaded fsync sends nothing and settles pending proposals; a
leader's AppendRequests are written before its own fsync takes the event loop.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.log import sync_threads
from broker.log.durability import FlushTicket
from broker.log.sync_threads import SyncThreads, fsync_workers
from broker.raft.config import RaftConfig
from broker.raft.driver import (
    Proposal,
    RaftDriverConfig,
    RaftDriverStoppedError,
    RaftTicker,
    ThreadLogSyncer,
)
from broker.raft.errors import NotLeaderError, ProposalDroppedError
from broker.raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    Heartbeat,
    Message,
    VoteRequest,
    VoteResponse,
    assign_entry,
)
from broker.raft.progress import ProgressState
from broker.raft.ready import Role
from tests.unit.raft_shell.helpers import FakeTransport, Node, record_batch
from wire.config_error import ConfigError


async def _until(node: Node, predicate) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(10):
        while not predicate():
            await node.driver.wait_changed()


def _appends_to(node: Node, peer: int) -> list[AppendRequest]:
    return [m for m in node.transport.of_type(AppendRequest) if m.target == peer]  # type: ignore[misc]


async def _become_leader(node: Node) -> None:
    """Campaign and grant node 1 the votes of node 2 (pre-vote, then vote), then ack the no-op."""
    driver, transport = node.driver, node.transport
    driver.campaign()
    await transport.wait_for(lambda: bool(transport.of_type(VoteRequest)))
    driver.deliver_nowait(VoteResponse(2, 1, 1, True, pre_vote=True))
    await transport.wait_for(
        lambda: any(not m.pre_vote for m in transport.of_type(VoteRequest))  # type: ignore[attr-defined]
    )
    driver.deliver_nowait(VoteResponse(2, 1, 1, True))
    await _until(node, lambda: driver.role is Role.LEADER)
    await _ack_all(node)
    await _until(node, lambda: driver.high_watermark == driver.core.log.last_index() + 1)


async def _ack_all(node: Node) -> None:
    """Node 2 acknowledges everything sent to it so far (node 3 stays silent)."""
    await node.transport.wait_for(lambda: bool(_appends_to(node, 2)))
    last = _appends_to(node, 2)[-1]
    match = last.entries[-1].index if last.entries else last.prev_index
    node.driver.deliver_nowait(AppendResponse(2, 1, last.term, True, match))


async def test_votes_leave_after_their_fsync_a_leaders_appends_before_it(tmp_path: Path) -> None:
    node = Node(tmp_path)
    driver, transport, syncer = node.driver, node.transport, node.syncer
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.campaign()
        await transport.wait_for(lambda: bool(transport.of_type(VoteRequest)))
        # The pre-vote changed no hard state, so it needed no fsync.
        assert syncer.calls == 0
        syncer.hold()
        driver.deliver_nowait(VoteResponse(2, 1, 1, True, pre_vote=True))
        with trio.fail_after(5):
            await syncer.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        # Term 1 and the self-vote are written; the vote requests wait for the fsync (Figure 2).
        assert node.storage.hard_state.term == 1 and node.storage.hard_state.vote == 1
        assert all(m.pre_vote for m in transport.of_type(VoteRequest))  # type: ignore[attr-defined]
        syncer.release()
        await transport.wait_for(
            lambda: any(not m.pre_vote for m in transport.of_type(VoteRequest))  # type: ignore[attr-defined]
        )
        position = transport.events.index(("send", transport.of_type(VoteRequest)[-1]))
        assert ("fsync-done", 0) in transport.events[:position]
        # The new term and self-vote were synced to LMDB before the vote requests left; the
        # pre-votes (no hard state change) waited for no sync.
        assert ("store-sync", None) in transport.events[:position]
        first_send = transport.events.index(("send", transport.of_type(VoteRequest)[0]))
        assert ("store-sync", None) not in transport.events[:first_send]

        # Elected: the leader's no-op is appended and held in its fsync. Its AppendRequests leave
        # meanwhile (thesis §10.2.1), but the leader does not count its own copy until the fsync:
        # one follower's acknowledgement is not a majority without it.
        syncer.hold()
        driver.deliver_nowait(VoteResponse(2, 1, 1, True))
        with trio.fail_after(5):
            await syncer.started.wait()
        await transport.wait_for(lambda: len(transport.of_type(AppendRequest)) == 2)
        assert driver.role is Role.LEADER
        assert node.log.log_end_offset == 1  # written to the page cache
        assert driver.core.durable_index == -1  # not reported persisted
        sends = [i for i, (kind, m) in enumerate(transport.events) if isinstance(m, AppendRequest)]
        assert ("fsync-done", 1) not in transport.events[: sends[0]]
        driver.deliver_nowait(AppendResponse(2, 1, 1, True, 0))
        await trio.testing.wait_all_tasks_blocked()
        assert driver.core.commit_index == -1  # the follower alone is not a majority of three
        syncer.release()
        await _until(node, lambda: driver.core.durable_index == 0)  # persisted() after the fsync
        await _until(node, lambda: driver.high_watermark == 1)  # now leader + follower commit
        nursery.cancel_scope.cancel()
    node.close()


async def _commit_with_the_next_fsync_held(node: Node) -> tuple[Proposal, Proposal]:
    """As leader: `first` is proposed and fsynced while `second` arrives and node 2 acknowledges
    `first`; returns with the fsync of the round that carries `first`'s commit (and `second`'s
    entry) held open. The caller releases `node.syncer`."""
    driver, syncer = node.driver, node.syncer
    await _become_leader(node)
    syncer.hold()
    first = driver.propose_nowait(record_batch(b"first"))
    with trio.fail_after(5):
        await syncer.started.wait()
    second = driver.propose_nowait(record_batch(b"second"))
    await node.transport.wait_for(
        lambda: any(m.entries and m.entries[-1].index == first.index for m in _appends_to(node, 2))
    )
    driver.deliver_nowait(AppendResponse(2, 1, driver.term, True, first.index))
    syncer.release()
    syncer.hold()
    with trio.fail_after(5):
        await syncer.started.wait()
    await trio.testing.wait_all_tasks_blocked()
    return first, second


@pytest.mark.parametrize("hook", ["none", "on_commit"])
async def test_a_commit_is_acknowledged_before_the_fsync_of_the_next_proposals(
    tmp_path: Path, hook: str
) -> None:
    """A partition group applies what it committed before the fsync of the Ready that carries
    the commit (issue 15): under load that Ready also carries the next proposals' entries, and
    waiting for their fsync cost every acknowledgement one more fsync. An `on_commit` hook (a
    partition's DeleteRecords log starts) keeps it so, and sees the commit first."""
    committed: list[int] = []
    node = Node(
        tmp_path,
        on_commit=(lambda entries: committed.append(entries[-1].index))
        if hook == "on_commit"
        else None,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.driver.run)
        first, second = await _commit_with_the_next_fsync_held(node)
        assert first.done and node.driver.high_watermark == first.index + 1
        assert not second.done
        if hook == "on_commit":
            assert committed[-1] == first.index
        node.syncer.release()
        nursery.cancel_scope.cancel()
    node.close()


async def test_a_state_machine_applies_only_what_its_own_fsync_made_durable(
    tmp_path: Path,
) -> None:
    """With `on_apply` (the controller, a group coordinator) the commit of `first` is applied
    only after the fsync of the round that carries it: the state machine never runs ahead of
    its own log."""
    applied: list[int] = []
    node = Node(tmp_path, on_apply=lambda entries: applied.append(entries[-1].index))
    assert not node.driver.applies_before_own_fsync
    async with trio.open_nursery() as nursery:
        await nursery.start(node.driver.run)
        first, second = await _commit_with_the_next_fsync_held(node)
        assert not first.done and first.index not in applied
        node.syncer.release()
        with trio.fail_after(5):
            await first.wait_committed()
        assert applied[-1] >= first.index
        assert not second.done
        nursery.cancel_scope.cancel()
    node.close()


async def test_proposals_during_an_fsync_share_the_next_one(tmp_path: Path) -> None:
    node = Node(tmp_path)
    driver, transport, syncer = node.driver, node.transport, node.syncer
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await _become_leader(node)
        fsyncs_before = syncer.calls
        syncer.hold()
        first = driver.propose_nowait(record_batch(b"first"))
        with trio.fail_after(5):
            await syncer.started.wait()
        # Nine more arrive while the first one's fsync runs.
        rest = [driver.propose_nowait(record_batch(b"p%d" % n)) for n in range(9)]
        syncer.release()
        with trio.fail_after(5):
            await transport.wait_for(
                lambda: sum(len(m.entries) for m in _appends_to(node, 2)) >= 11  # type: ignore[attr-defined]
            )
        await trio.testing.wait_all_tasks_blocked()
        assert syncer.calls == fsyncs_before + 2  # ten proposals, two fsyncs
        assert [len(m.entries) for m in _appends_to(node, 2)][-2:] == [1, 9]
        await _ack_all(node)
        with trio.fail_after(5):
            for proposal in [first, *rest]:
                await proposal.wait_committed()
        assert driver.high_watermark == rest[-1].index + 1
        assert driver.statistics().proposals_committed == 10
        nursery.cancel_scope.cancel()
    node.close()


async def test_refused_send_reports_the_peer_unreachable(tmp_path: Path) -> None:
    node = Node(tmp_path)
    driver, transport = node.driver, node.transport
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await _become_leader(node)
        assert driver.core.progress[2].state is ProgressState.REPLICATE
        transport.accept = False  # every peer queue is full
        driver.propose_nowait(record_batch(b"x"))
        with trio.fail_after(5):
            await transport.wait_for(lambda: driver.statistics().messages_refused >= 1)
        assert driver.core.progress[2].state is ProgressState.PROBE
        nursery.cancel_scope.cancel()
    node.close()


async def test_follower_refuses_proposals_with_the_leader_hint(tmp_path: Path) -> None:
    node = Node(tmp_path)
    driver = node.driver
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.deliver_nowait(Heartbeat(3, 1, 4, -1))
        await _until(node, lambda: driver.leader_id == 3)
        with pytest.raises(NotLeaderError) as caught:
            await driver.propose(record_batch(b"x"))
        assert caught.value.leader_hint == 3
        nursery.cancel_scope.cancel()
    node.close()


async def test_a_proposal_replaced_by_another_leaders_entry_is_dropped(tmp_path: Path) -> None:
    node = Node(tmp_path)
    driver = node.driver
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await _become_leader(node)
        lost = driver.propose_nowait(record_batch(b"mine"))
        # Node 2 won term 2 elsewhere and committed its own entry at that index.
        other: Entry = assign_entry(record_batch(b"theirs"), base_index=lost.index, term=2)
        driver.deliver_nowait(AppendRequest(2, 1, 2, lost.index - 1, 1, (other,), other.index))
        with trio.fail_after(5), pytest.raises(ProposalDroppedError):
            await lost.wait_committed()
        assert driver.leader_id == 2
        assert driver.high_watermark == other.index + 1
        assert driver.statistics().core.entries_truncated == 1
        nursery.cancel_scope.cancel()
    node.close()


async def test_ticks_elect_a_single_voter_and_apply_its_entries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    applied: list[Entry] = []
    node = Node(
        tmp_path,
        voters=(1,),
        config=RaftDriverConfig(tick_interval_ms=100),
        on_apply=applied.extend,
    )
    driver = node.driver
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        await nursery.start(driver.run)
        await _until(node, lambda: driver.role is Role.LEADER)
        # The randomized election timeout is in [10, 20) ticks of 100 ms.
        assert 1.0 <= trio.current_time() - started < 2.1
        proposal = await driver.propose(record_batch(b"solo"))
        await driver.wait_high_watermark(proposal.index + 1)
        assert [entry.index for entry in applied] == [0, proposal.index]
        # acks=1: wait only for the leader's own fsync.
        written = driver.propose_nowait(record_batch(b"local"))
        await driver.wait_durable(written.index)
        assert node.log.flushed_offset == written.index + 1
        assert driver.statistics().ticks >= 10
        nursery.cancel_scope.cancel()
    node.close()


async def test_a_shared_ticker_drives_every_registered_group(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Goal: with a RaftTicker the driver arms no timer of its own: it ticks exactly when the
    # ticker says, so a group whose ticker is not running never starts an election, and a
    # stopped driver is no longer ticked.
    ticker = RaftTicker(100)
    node = Node(tmp_path, voters=(1,), config=RaftDriverConfig(tick_interval_ms=100), ticker=ticker)
    driver = node.driver
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await trio.sleep(5)  # mock clock: five seconds with no ticker running
        assert driver.statistics().ticks == 0 and driver.role is not Role.LEADER
        started = trio.current_time()
        await nursery.start(ticker.run)
        await _until(node, lambda: driver.role is Role.LEADER)
        # The randomized election timeout is in [10, 20) ticks of 100 ms.
        assert 1.0 <= trio.current_time() - started < 2.1
        assert driver.statistics().ticks >= 10
        nursery.cancel_scope.cancel()
    assert ticker.driver_count == 0  # unregistered when its run() ended
    node.close()


async def test_propose_times_out_when_the_followers_never_answer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    node = Node(tmp_path)
    driver = node.driver
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await _become_leader(node)
        from broker.raft.driver import ProposalTimeoutError

        with pytest.raises(ProposalTimeoutError):
            await driver.propose(record_batch(b"x"), timeout_ms=500)
        nursery.cancel_scope.cancel()
    node.close()


@pytest.mark.parametrize("shared", [False, True], ids=["to_thread", "shared_threads"])
async def test_cancelled_during_a_threaded_fsync_sends_nothing_but_appends(
    tmp_path: Path, shared: bool
) -> None:
    # The real ThreadLogSyncer, its worker thread held inside the fsync; real clock, slow ticks.
    # `shared`: in the SyncThreads a broker's replicas share (ReplicaManager.run), not to_thread.
    hold = threading.Event()
    entered = threading.Event()
    release = threading.Event()
    thread_names: set[str] = set()

    def run_ticket(ticket: FlushTicket) -> None:
        thread_names.add(threading.current_thread().name)
        if hold.is_set():
            entered.set()
            release.wait(10)
        ticket.run()

    threads = SyncThreads(name="raft-fsync") if shared else None
    syncer = ThreadLogSyncer(run_ticket, threads=threads)
    node = Node(tmp_path, syncer=syncer)
    driver, transport = node.driver, node.transport
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await _become_leader(node)
        sent_before = len(transport.sent)
        hold.set()
        proposal = driver.propose_nowait(record_batch(b"in-flight"))
        assert await trio.to_thread.run_sync(entered.wait, 10)
        nursery.cancel_scope.cancel()
        # The cancel cannot interrupt the thread: let the fsync finish now.
        release.set()
    # The fsync completed and was recorded on the log, but nothing it covered was sent, except
    # the leader's AppendRequests, which leave before its own fsync (rule 1's exception).
    assert node.log.flushed_offset == node.log.log_end_offset == proposal.index + 1
    after = transport.sent[sent_before:]
    assert after and all(isinstance(message, AppendRequest) for message in after), after
    assert proposal.done
    with pytest.raises(RaftDriverStoppedError):
        await proposal.wait_committed()
    with pytest.raises(RaftDriverStoppedError):
        driver.propose_nowait(record_batch(b"late"))
    assert thread_names and all(name.startswith("raft-fsync") == shared for name in thread_names)
    if threads is not None:
        threads.close()
    node.close()


class _LinkWriterTransport(FakeTransport):
    """Hands every message to a writer task, as each peer link of `RaftTransport` does; the
    writer records ("written", message) when it runs."""

    def __init__(self, events: list[tuple[str, object]]) -> None:
        super().__init__(events)
        self._queue_in, self._queue_out = trio.open_memory_channel[Message](1_000)

    def send(self, group: str, message: Message) -> bool:
        self._queue_in.send_nowait(message)
        return super().send(group, message)

    async def write_forever(self) -> None:
        async for message in self._queue_out:
            self.events.append(("written", message))


async def test_a_leaders_appends_are_written_before_its_inline_fsync_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's AppendRequests reach its links' writers before its own fsync takes the event
    loop (an fsync run inline, as a broker runs them: broker/log/inline_fsync.py). The writers
    and the inline runner wake in the same scheduler batch, which trio runs in either order: in
    half of the rounds the fsync held the followers' copies back for as long as it took."""
    real_fdatasync_all = sync_threads._fdatasync_all
    events: list[tuple[str, object]] = []

    def recorded_fdatasync_all(fds: list[int]) -> None:
        events.append(("fsync", None))
        real_fdatasync_all(fds)

    monkeypatch.setattr(sync_threads, "_fdatasync_all", recorded_fdatasync_all)
    async with fsync_workers("raft-fsync", helper=False) as threads:
        node = Node(tmp_path, syncer=ThreadLogSyncer(threads=threads))
        transport = _LinkWriterTransport(events)
        node.transport = node.driver.transport = transport
        driver = node.driver
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.write_forever)
            await nursery.start(driver.run)
            await _become_leader(node)
            rounds = 24
            for n in range(rounds):
                events.append(("propose", n))
                proposal = driver.propose_nowait(record_batch(b"p%d" % n))
                with trio.fail_after(10):
                    await driver.wait_durable(proposal.index)
            nursery.cancel_scope.cancel()
    assert threads.inline_count >= rounds  # the fsyncs did run inline
    starts = [i for i, (kind, _) in enumerate(events) if kind == "propose"]
    for n, (start, end) in enumerate(zip(starts, [*starts[1:], len(events)], strict=True)):
        kinds = [
            kind
            for kind, message in events[start:end]
            if kind == "fsync" or (kind == "written" and isinstance(message, AppendRequest))
        ]
        assert "fsync" in kinds and "written" in kinds, (n, kinds)
        assert kinds.index("written") < kinds.index("fsync"), (n, kinds)
    node.close()


async def test_listeners_hear_every_change_leadership_waiters_only_leadership(
    tmp_path: Path,
) -> None:
    """A change listener is called at every change `wait_changed` reports, in the driver's task
    (the fetch waiters' waker, broker/cluster/serving.py); `wait_leadership_changed` returns
    only for role, leader, term or quiescence (the leadership watcher, which an append, an fsync
    and a commit would otherwise wake three times per write)."""
    node = Node(tmp_path)
    driver = node.driver
    heard: list[tuple[int, int]] = []

    def listener() -> None:
        heard.append((driver.change_version, driver.high_watermark))

    driver.add_change_listener(listener)
    leadership_changes: list[Role] = []

    async def watch_leadership() -> None:
        while True:
            version = driver.leadership_version
            await driver.wait_leadership_changed(version)
            leadership_changes.append(driver.role)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_leadership)
        await nursery.start(driver.run)
        await _become_leader(node)
        assert Role.LEADER in leadership_changes
        # Every change was heard, each with the version it made.
        assert [version for version, _ in heard] == list(range(1, driver.change_version + 1))
        heard.clear()
        leadership_changes.clear()
        version_before = driver.leadership_version
        proposal = driver.propose_nowait(record_batch(b"x"))
        await driver.wait_durable(proposal.index)
        await _ack_all(node)
        with trio.fail_after(5):
            await proposal.wait_committed()
        await trio.testing.wait_all_tasks_blocked()
        # The append, its fsync and its commit were heard (the commit with its high watermark)...
        assert len(heard) >= 3 and heard[-1][1] == proposal.index + 1
        # ... and none of them woke the leadership watcher.
        assert leadership_changes == [] and driver.leadership_version == version_before
        driver.remove_change_listener(listener)
        driver.remove_change_listener(listener)  # not an error
        heard.clear()
        await driver.wait_durable(driver.propose_nowait(record_batch(b"y")).index)
        assert heard == []
        driver.add_change_listener(listener)
        nursery.cancel_scope.cancel()
    # Stopping is a change too, and leaves nothing to wait for.
    assert heard and heard[-1][0] == driver.change_version
    with pytest.raises(RaftDriverStoppedError):
        await driver.wait_leadership_changed(driver.leadership_version)
    node.close()


def test_driver_config_validation_names_the_field() -> None:
    RaftDriverConfig().validate()
    with pytest.raises(ConfigError, match="tick_interval_ms"):
        RaftDriverConfig(tick_interval_ms=0).validate()
    with pytest.raises(ConfigError, match="inbox_messages_max"):
        RaftDriverConfig(inbox_messages_max=-1).validate()
    assert RaftConfig().election_timeout_ticks > 1


async def test_a_full_transport_queue_makes_the_leader_probe_instead_of_blocking(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The real RaftTransport with a one-message queue per peer and peers that never accept the
    # connection: the driver never blocks, and the refusal reaches the core as unreachable.
    from broker.raft.transport import RaftTransport, RaftTransportConfig

    async def never_connects(node_id: int, host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError

    transport = RaftTransport(
        node_id=1,
        cluster_id="unit",
        peers={2: ("memory", 2), 3: ("memory", 3)},
        config=RaftTransportConfig(peer_queue_messages_max=1, connect_timeout_ms=3_600_000),
        connector=never_connects,
    )
    node = Node(tmp_path)
    node.driver.transport = transport
    driver = node.driver
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await nursery.start(driver.run)
        driver.campaign()
        await _until(node, lambda: driver.role is Role.PRE_CANDIDATE)
        driver.deliver_nowait(VoteResponse(2, 1, 1, True, pre_vote=True))
        await _until(node, lambda: driver.role is Role.CANDIDATE)
        driver.deliver_nowait(VoteResponse(2, 1, 1, True))
        await _until(node, lambda: driver.role is Role.LEADER)
        # Node 2 acknowledges the no-op out of band: the leader would pipeline to it (REPLICATE),
        # but the commit broadcast that follows finds the queue full (the pre-vote request still
        # sits in it), so the core is told and falls back to probing.
        refused_before = driver.statistics().messages_refused
        driver.deliver_nowait(AppendResponse(2, 1, 1, True, 0))
        await _until(node, lambda: driver.high_watermark == 1)
        await trio.testing.wait_all_tasks_blocked()
        assert driver.statistics().messages_refused > refused_before
        assert driver.core.progress[2].state is ProgressState.PROBE
        assert transport.statistics().messages_dropped_queue_full >= 1
        # The driver never blocked on the full queues: proposals are still written and synced.
        proposals = [driver.propose_nowait(record_batch(b"p%d" % n)) for n in range(5)]
        with trio.fail_after(5):
            await driver.wait_durable(proposals[-1].index)
        nursery.cancel_scope.cancel()
    node.close()
