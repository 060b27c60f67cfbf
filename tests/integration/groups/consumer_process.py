"""A group consumer as its own process, for tests that kill consumers (`kill -9`).

    python consumer_process.py BOOTSTRAP TOPIC GROUP WORKDIR [ASSIGNOR] [INSTANCE_ID]

It appends `partition offset` to WORKDIR/ledger for every record poll() returns (the
"processing"), and after every poll writes the partitions it owns and its generation to
WORKDIR/owned.json (atomically). SIGTERM closes it gracefully (last commit, LeaveGroup).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from client import Consumer

SESSION_TIMEOUT_MS = 2_000
HEARTBEAT_INTERVAL_MS = 200


def main() -> None:
    bootstrap, topic, group, workdir = sys.argv[1:5]
    assignor = sys.argv[5] if len(sys.argv) > 5 else "range"
    instance = sys.argv[6] if len(sys.argv) > 6 else None
    work = Path(workdir)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with (
        Consumer(
            bootstrap,
            group_id=group,
            group_instance_id=instance,
            assignor=assignor,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            auto_commit_interval_ms=200,
            max_poll_interval_ms=10_000,
            client_id=work.name,
        ) as consumer,
        (work / "ledger").open("a") as ledger,
    ):
        consumer.subscribe([topic])
        member = consumer._aio._group
        assert member is not None
        while not stopping:
            records = consumer.poll(timeout_ms=100)
            for record in records:
                ledger.write(f"{record.partition} {record.offset}\n")
            ledger.flush()
            state = {
                "owned": sorted(tp.partition for tp in member.owned),
                "generation": member.generation,
                "member_id": member.member_id,
            }
            tmp = work / "owned.json.tmp"
            tmp.write_text(json.dumps(state))
            os.replace(tmp, work / "owned.json")


if __name__ == "__main__":
    main()
