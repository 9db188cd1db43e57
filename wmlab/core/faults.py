"""A test hook that kills the process at a named point, so that tests can crash a run exactly
inside a checkpoint write or while an episode is being saved (tests/test_fault_injection.py).

The hook is armed only by the environment variable WMLAB_TEST_KILL_AT="POINT:N", which the tests
set in the subprocesses they kill: the process sends itself SIGKILL the N-th time it reaches
`kill_point("POINT")`. Unset (always, outside those tests), a kill point costs one dictionary
lookup and does nothing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

VARIABLE = "WMLAB_TEST_KILL_AT"

#: Every kill point in wmlab, in the order a run usually reaches them.
POINTS = (
    "step",  # after an environment step of every environment
    "update",  # after an optimiser update, before the counters record it
    "episode-write",  # an episode's temporary file written, not yet renamed into place
    "episode-saved",  # an episode's file in place, the buffer not yet told
    "log-torn",  # half a metrics line written
    "log-line",  # a metrics line written
    "evaluation",  # an evaluation logged
    "checkpoint-agent",  # the agent's files written into the staging directory
    "checkpoint-snapshot",  # replay: the last snapshot moved aside, the new one not yet written
    "checkpoint-loop",  # the loop's files written, the checkpoint not yet marked complete
    "checkpoint-complete",  # the staging directory complete, nothing renamed
    "checkpoint-between-renames",  # rank<r> renamed to rank<r>.old, rank<r>.new not yet to rank<r>
    "checkpoint-renamed",  # rank<r>.new renamed to rank<r>, rank<r>.old not yet removed
)

_hits: dict[str, int] = {}


def kill_point(name: str, before: Callable[[], None] | None = None) -> None:
    """SIGKILL this process if WMLAB_TEST_KILL_AT names `name` and this is its N-th hit; `before`
    runs just before the kill (e.g. to leave half a line in a file)."""
    armed = os.environ.get(VARIABLE)
    if armed is None:
        return
    point, _, count = armed.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)
