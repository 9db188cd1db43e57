"""The loop inside a world model's `imagine`: choose an action, take one model step, collect.

Shape legend: B batch, L horizon.
"""

from __future__ import annotations

from typing import Any, Callable


def roll_steps(
    step: Callable[[Any, Any], tuple], state: Any, horizon: int, choose_action: Callable[[int, Any], Any]
) -> tuple[list[Any], list[list[Any]]]:
    """`horizon` model steps from `state`: at step l, action = choose_action(l, current state)
    (the given actions' column l, or the policy's choice) and (next state, *outputs) = step(current
    state, action). Returns the L actions taken and, for each value `step` returns (the reached
    state first), the list of its L values; the caller stacks them into (B, L, ...)."""
    taken, results = [], []
    for index in range(horizon):
        action = choose_action(index, state)
        result = step(state, action)
        state = result[0]
        taken.append(action)
        results.append(result)
    return taken, [list(values) for values in zip(*results)]
