"""What /proc says about a process, for the tests of the fsync helper process (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path


def ignores_signal(pid: int, signum: int) -> bool:
    """Whether `pid` ignores `signum` (its SigIgn mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))


def exited(pid: int) -> bool:
    """Gone, or a zombie whose parent has not reaped it yet: either way it has exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def open_files(pid: int) -> list[Path]:
    """What `pid`'s descriptors point at."""
    files = []
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            files.append(Path(os.readlink(link)))
        except FileNotFoundError:
            continue
    return files


def fsync_helpers(pid: int) -> list[int]:
    """The children of `pid` that run broker/log/fsync_helper.py (a broker's fsync helpers)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if any(part.endswith(b"fsync_helper.py") for part in command):
            found.append(int(child))
    return found
