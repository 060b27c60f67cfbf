"""A tiny script language for driving RaftCores by hand (etcd's datadriven interaction tests).

A script is a sequence of blocks:

    command arg arg key=value
    ----
    expected output (never blank lines; "ok" when a command prints nothing)
    <blank line>

Commands: add-nodes, campaign, tick, tick-election, tick-heartbeat, propose, propose-conf,
add-learner, promote, remove, transfer-leader, process-ready, deliver-msgs, drop-msgs, stabilize,
isolate, cut, heal, crash, restart, compact, status, log. Persistence here is synchronous (write
and fsync per Ready), messages wait in one FIFO queue until delivered, and every node's randomness
is seeded by its id, so traces are deterministic.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore, Ready
from broker.raft.messages import Configuration, Entry, EntryKind, Message, describe
from broker.raft.storage import MemoryStorage
from wire import batch as batch_codec
from wire.error_codes import BrokerError


@dataclasses.dataclass
class Block:
    command: str
    arguments: list[str]
    expected: list[str]
    line_number: int


def parse_script(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    position = 0
    while position < len(lines):
        line = lines[position].strip()
        if not line or line.startswith("#"):
            position += 1
            continue
        words = line.split()
        start = position
        assert lines[position + 1] == "----", f"line {position + 2}: expected ----"
        position += 2
        expected: list[str] = []
        while position < len(lines) and lines[position] != "":
            expected.append(lines[position])
            position += 1
        blocks.append(Block(words[0], words[1:], expected, start + 1))
    return blocks


def render_script(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts = []
    for block, output in zip(blocks, outputs, strict=True):
        command = " ".join([block.command, *block.arguments])
        parts.append("\n".join([command, "----", *output]) + "\n")
    return "\n".join(parts)


def describe_entry(entry: Entry) -> str:
    if entry.kind is EntryKind.NOOP:
        body = "noop"
    elif entry.kind is EntryKind.CONFIGURATION:
        assert entry.configuration is not None
        body = f"conf voters={list(entry.configuration.voters)}"
        if entry.configuration.learners:
            body += f" learners={list(entry.configuration.learners)}"
    else:
        records = batch_codec.decode_records(entry.data)
        values = ",".join((record.value or b"").decode() for record in records)
        body = f"'{values}'" if len(records) == 1 else f"'{values}' x{len(records)}"
    span = (
        f"{entry.base_index}-{entry.index}" if entry.base_index != entry.index else f"{entry.index}"
    )
    return f"{span}@{entry.term} {body}"


class InteractionEnv:
    def __init__(self, core_class: type[RaftCore] = RaftCore) -> None:
        self.core_class = core_class
        self.storages: dict[int, MemoryStorage] = {}
        self.cores: dict[int, RaftCore] = {}
        self.queue: list[Message] = []
        self.blocked: list[tuple[int, int]] = []
        # Quiescence off: these scripts pin per-tick heartbeats; test_quiescence.py covers it.
        self.config = RaftConfig(election_timeout_ticks=10, heartbeat_ticks=1, quiesce=False)
        self.output: list[str] = []
        self.proposal_count = 0

    # --- plumbing ----------------------------------------------------------------------------

    def run(self, block: Block) -> list[str]:
        self.output = []
        handler: Callable[[list[str], dict[str, str]], None] = getattr(
            self, "cmd_" + block.command.replace("-", "_")
        )
        positional = [a for a in block.arguments if "=" not in a]
        keywords = dict(a.split("=", 1) for a in block.arguments if "=" in a)
        try:
            handler(positional, keywords)
        except BrokerError as error:
            self.output.append(f"error: {error}")
        return self.output or ["ok"]

    def _node_ids(self, positional: list[str]) -> list[int]:
        return [int(a) for a in positional] if positional else sorted(self.cores)

    def _start(self, node_id: int) -> None:
        self.cores[node_id] = self.core_class(
            node_id=node_id,
            storage=self.storages[node_id],
            config=self.config,
            rng=random.Random(node_id),
        )

    def _handle_ready(self, node_id: int) -> bool:
        core = self.cores[node_id]
        if not core.has_ready():
            return False
        ready = core.ready()
        self._print_ready(node_id, ready)
        storage = self.storages[node_id]
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        self.queue.extend(ready.messages)
        core.advance(ready)
        core.persisted(ready.last_index, ready.last_term)
        core.validate()
        return True

    def _print_ready(self, node_id: int, ready: Ready) -> None:
        core = self.cores[node_id]
        out = self.output
        out.append(f"> {node_id} ready: {core.role.value} term={core.term} leader={core.leader_id}")
        if ready.hard_state is not None:
            hs = ready.hard_state
            out.append(f"  hard state: term={hs.term} vote={hs.vote} commit={hs.commit_index}")
        if ready.snapshot is not None:
            out.append(f"  snapshot: {ready.snapshot.index}@{ready.snapshot.term}")
        for entry in ready.entries:
            out.append(f"  persist {describe_entry(entry)}")
        for entry in ready.committed_entries:
            out.append(f"  apply {describe_entry(entry)}")
        for message in ready.messages:
            out.append(f"  send {describe(message)}")

    def _deliver(
        self, targets: list[int] | None, *, drop: bool = False, source: int | None = None
    ) -> bool:
        keep: list[Message] = []
        delivered = False
        queue, self.queue = self.queue, []
        for message in queue:
            if (targets is not None and message.target not in targets) or (
                source is not None and message.source != source
            ):
                keep.append(message)
                continue
            delivered = True
            cut = (message.source, message.target) in self.blocked
            if drop or cut or message.target not in self.cores:
                self.output.append(f"  dropped {describe(message)}")
                continue
            self.output.append(f"  deliver {describe(message)}")
            self.cores[message.target].step(message)
        self.queue = keep + self.queue
        return delivered

    # --- commands ----------------------------------------------------------------------------

    def cmd_add_nodes(self, positional: list[str], keywords: dict[str, str]) -> None:
        count = int(positional[0])
        first = max(self.storages, default=0) + 1
        new = list(range(first, first + count))
        voters = [int(v) for v in keywords["voters"].split(",")] if "voters" in keywords else new
        learners = [int(v) for v in keywords.get("learners", "").split(",") if v]
        self.config = dataclasses.replace(
            self.config,
            pre_vote=keywords.get("pre-vote", "true") == "true",
            check_quorum=keywords.get("check-quorum", "true") == "true",
            append_bytes_max=int(keywords.get("append-bytes-max", self.config.append_bytes_max)),
        )
        for node_id in new:
            self.storages[node_id] = MemoryStorage(Configuration.of(voters, learners))
            self._start(node_id)
        self.output.append(f"nodes {new} voters={voters} learners={learners}")

    def cmd_campaign(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.cores[int(positional[0])].campaign()

    def cmd_tick(self, positional: list[str], keywords: dict[str, str]) -> None:
        for _ in range(int(keywords.get("count", "1"))):
            for node_id in self._node_ids(positional):
                self.cores[node_id].tick()

    def cmd_tick_election(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.cmd_tick(positional, {"count": str(2 * self.config.election_timeout_ticks)})

    def cmd_tick_heartbeat(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.cmd_tick(positional, {"count": str(self.config.heartbeat_ticks)})

    def cmd_propose(self, positional: list[str], keywords: dict[str, str]) -> None:
        core = self.cores[int(positional[0])]
        records = int(keywords.get("records", "1"))
        value = positional[1].encode()
        batch = batch_codec.build_batch([(0, None, value, None)] * records)
        entry = core.propose(batch)
        self.output.append(f"proposed {describe_entry(entry)}")

    def _change(self, leader_id: int, change: Callable[[list[int], list[int]], None]) -> None:
        core = self.cores[leader_id]
        voters = list(core.configuration.voters)
        learners = list(core.configuration.learners)
        change(voters, learners)
        entry = core.propose_configuration(Configuration.of(voters, learners))
        self.output.append(f"proposed {describe_entry(entry)}")

    def cmd_add_learner(self, positional: list[str], keywords: dict[str, str]) -> None:
        leader_id, node_id = int(positional[0]), int(positional[1])
        if node_id not in self.storages:
            # A joining node starts from the bootstrap configuration and learns the rest.
            bootstrap = self.storages[min(self.storages)].initial_state().configurations[0][1]
            self.storages[node_id] = MemoryStorage(bootstrap)
            self._start(node_id)
        self._change(leader_id, lambda voters, learners: learners.append(node_id))

    def cmd_promote(self, positional: list[str], keywords: dict[str, str]) -> None:
        node_id = int(positional[1])

        def change(voters: list[int], learners: list[int]) -> None:
            if node_id in learners:
                learners.remove(node_id)
            voters.append(node_id)

        self._change(int(positional[0]), change)

    def cmd_remove(self, positional: list[str], keywords: dict[str, str]) -> None:
        node_id = int(positional[1])

        def change(voters: list[int], learners: list[int]) -> None:
            for group in (voters, learners):
                if node_id in group:
                    group.remove(node_id)

        self._change(int(positional[0]), change)

    def cmd_transfer_leader(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.cores[int(positional[0])].transfer_leadership(int(positional[1]))

    def cmd_process_ready(self, positional: list[str], keywords: dict[str, str]) -> None:
        for node_id in self._node_ids(positional):
            self._handle_ready(node_id)

    def cmd_deliver_msgs(self, positional: list[str], keywords: dict[str, str]) -> None:
        targets = [int(a) for a in positional] if positional else None
        source = int(keywords["from"]) if "from" in keywords else None
        self._deliver(targets, source=source)

    def cmd_drop_msgs(self, positional: list[str], keywords: dict[str, str]) -> None:
        source = int(keywords["from"]) if "from" in keywords else None
        targets = [int(a) for a in positional] if positional else None
        self._deliver(targets, drop=True, source=source)

    def cmd_stabilize(self, positional: list[str], keywords: dict[str, str]) -> None:
        nodes = self._node_ids(positional)
        for _ in range(1000):
            progressed = False
            for node_id in nodes:
                progressed |= self._handle_ready(node_id)
            progressed |= self._deliver(nodes)
            if not progressed:
                return
        raise AssertionError("stabilize did not converge in 1000 rounds")

    def cmd_isolate(self, positional: list[str], keywords: dict[str, str]) -> None:
        node_id = int(positional[0])
        for other in sorted(self.storages):
            if other != node_id:
                self.blocked += [(node_id, other), (other, node_id)]

    def cmd_cut(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.blocked.append((int(positional[0]), int(positional[1])))

    def cmd_heal(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.blocked = []

    def cmd_crash(self, positional: list[str], keywords: dict[str, str]) -> None:
        # Persistence is synchronous here, so a crash loses only the in-memory state.
        del self.cores[int(positional[0])]

    def cmd_restart(self, positional: list[str], keywords: dict[str, str]) -> None:
        self._start(int(positional[0]))

    def cmd_compact(self, positional: list[str], keywords: dict[str, str]) -> None:
        self.storages[int(positional[0])].compact(int(positional[1]))

    def cmd_status(self, positional: list[str], keywords: dict[str, str]) -> None:
        for node_id in self._node_ids(positional):
            core = self.cores.get(node_id)
            if core is None:
                self.output.append(f"{node_id}: down")
                continue
            line = (
                f"{node_id}: {core.role.value} term={core.term} leader={core.leader_id} "
                f"commit={core.commit_index} last={core.log.last_index()} "
                f"voters={list(core.configuration.voters)}"
            )
            if core.configuration.learners:
                line += f" learners={list(core.configuration.learners)}"
            self.output.append(line)
            for peer, progress in sorted(core.progress.items()):
                self.output.append(f"  {peer}: {progress!r}")

    def cmd_log(self, positional: list[str], keywords: dict[str, str]) -> None:
        for node_id in self._node_ids(positional):
            storage = self.storages[node_id]
            snapshot = storage.snapshot()
            self.output.append(f"{node_id}: start={snapshot.index + 1}")
            for entry in storage.all_entries:
                self.output.append(f"  {describe_entry(entry)}")
