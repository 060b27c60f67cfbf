"""Golden interaction scripts: classic Raft scenarios whose full traces are checked in.

Each tests/unit/raft/testdata/*.txt file is a script (see interaction.py); a changed trace fails the
test with a diff. `pytest tests/unit/raft --rewrite` regenerates the files; review the diff.
"""

from __future__ import annotations

import difflib
import pathlib

import pytest

from tests.unit.raft.interaction import InteractionEnv, parse_script, render_script

TESTDATA = pathlib.Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_interaction(path: pathlib.Path, request: pytest.FixtureRequest) -> None:
    """Goal: the scenario's trace (every Ready, message, status line) is as checked in."""
    text = path.read_text()
    blocks = parse_script(text)
    env = InteractionEnv()
    outputs = [env.run(block) for block in blocks]
    actual = render_script(blocks, outputs)
    if request.config.getoption("--rewrite", default=False):
        path.write_text(actual)
        return
    if actual != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                str(path),
                "actual",
            )
        )
        pytest.fail(f"trace of {path.name} changed (rerun with --rewrite if intended):\n{diff}")


def test_scripts_exist() -> None:
    names = {path.stem for path in SCRIPTS}
    assert {"election", "split_vote", "stale_log", "divergence", "transfer", "membership"} <= names
