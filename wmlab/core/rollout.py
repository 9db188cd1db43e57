"""The loop inside a world model's `imagine`: where each step's action comes from, and the loop
that chooses an action, takes one model step and collects.

Shape legend: B batch, L horizon.
"""

from __future__ import annotations

from typing import Any, Callable

from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.shapes import imagined_length

#: A family's action encoder: encode(actions, leading names, sizes) -> the model's actions
#: (*leading, ...), checking the leading dimensions against (and binding them in) `sizes`.
ActionEncoder = Callable[[Any, tuple[str, ...], dict[str, int]], Any]


def action_source(
    actions_or_policy: ActionsOrPolicy, horizon: int | None, sizes: dict[str, int], encode: ActionEncoder
) -> tuple[Callable[[int, Any], Any], int]:
    """Where the actions of a world model's `imagine` come from: given actions (B, L, ...) (encoded
    here, binding L in `sizes`) or a policy(state) -> action (B, ...), returns (choose(l, current
    state) -> the model's action at step l: the actions' column l, or the policy's choice encoded;
    the number of steps L: `horizon` for a policy, else the actions' length, see
    `imagined_length`). `sizes` holds B, bound by the caller from the state."""
    if callable(actions_or_policy):
        policy = actions_or_policy

        def policy_action(index: int, state: Any) -> Any:
            return encode(policy(state), ("B",), dict(sizes))

        return policy_action, imagined_length(None, horizon, sizes, policy=True)
    actions = encode(actions_or_policy, ("B", "L"), sizes)

    def given_action(index: int, state: Any) -> Any:
        return actions[:, index]

    return given_action, imagined_length(actions, horizon, sizes, policy=False)


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
