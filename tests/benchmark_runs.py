"""Running a benchmark as a user would (`python -m benchmarks.<module>` from the checkout), for
the benchmarks' own tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(module: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run `benchmarks.<module>` with `args` to completion (bounded by `timeout_s`); its exit
    status and output are the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
