"""Shape checks for tensors entering a module, with messages written in the shape legend.

    sizes = check_shape("obs['vector']", vector, ("B", "T", 4))
    check_shape("action", action, ("B", "T", 2), sizes)
    # ShapeError: action: expected (B, T, 2) with B=4, T=7, got (4, 7, 3)

Letters are bound on first sight and must agree afterwards; integers must match exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from wmlab.core.errors import ShapeError


def format_expected(expected: Sequence[int | str], sizes: dict[str, int]) -> str:
    pattern = f"({', '.join(str(size) for size in expected)})"
    letters = list(dict.fromkeys(size for size in expected if isinstance(size, str) and size in sizes))
    bound = ", ".join(f"{letter}={sizes[letter]}" for letter in letters)
    return f"{pattern} with {bound}" if bound else pattern


def shape_matches(
    shape: tuple[int, ...], expected: Sequence[int | str], sizes: dict[str, int]
) -> dict[str, int] | None:
    """The letters bound by matching `shape` against `expected`, or None when it does not match."""
    if len(shape) != len(expected):
        return None
    bound = dict(sizes)
    for actual, wanted in zip(shape, expected):
        if isinstance(wanted, int):
            if actual != wanted:
                return None
        elif bound.setdefault(wanted, actual) != actual:
            return None
    return bound


def check_shape(
    name: str, value: Any, expected: Sequence[int | str], sizes: dict[str, int] | None = None
) -> dict[str, int]:
    """Raise ShapeError unless value.shape matches `expected`; returns `sizes` with the letters
    bound (updated in place when given, so one dict threads through several checks)."""
    sizes = {} if sizes is None else sizes
    shape = tuple(value.shape)
    bound = shape_matches(shape, expected, sizes)
    if bound is None:
        raise ShapeError(f"{name}: expected {format_expected(expected, sizes)}, got {shape}")
    sizes.update(bound)
    return sizes


def imagined_length(actions: Any, horizon: int | None, sizes: dict[str, int], policy: bool) -> int:
    """How many steps a world model's `imagine` rolls: `horizon` for a policy (required, at least
    1), else the length L bound in `sizes` by the actions (B, L, ...) (indices (B, L) or vectors
    (B, L, A)), which `horizon`, where given, must equal."""
    if policy:
        if horizon is None or horizon < 1:
            raise ValueError(f"imagine with a policy needs a positive horizon, got {horizon}")
        return horizon
    if horizon is not None and horizon != sizes["L"]:
        action_size = ", A" if actions.ndim > 2 else ""
        raise ShapeError(
            f"actions: expected (B, {horizon}{action_size}) for horizon {horizon}, got {tuple(actions.shape)}"
        )
    return sizes["L"]


def episode_starts(is_first: Any, device: torch.device | str, sizes: dict[str, int]) -> torch.Tensor:
    """is_first (B, T) as a bool tensor on `device`, checked against `sizes` (binding B and T there)."""
    is_first = torch.as_tensor(is_first, device=device).bool()
    check_shape("is_first", is_first, ("B", "T"), sizes)
    return is_first


def signal_tensors(
    reward: Any, is_first: Any, is_terminal: Any, device: torch.device | str, sizes: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-step signals as tensors on `device`, each checked as (B, T) against `sizes` (and binding
    B and T there): reward float, is_first bool, is_terminal float (1.0 at a terminal)."""
    reward = torch.as_tensor(reward, device=device).float()
    check_shape("reward", reward, ("B", "T"), sizes)
    is_first = episode_starts(is_first, device, sizes)
    is_terminal = torch.as_tensor(is_terminal, device=device).float()
    check_shape("is_terminal", is_terminal, ("B", "T"), sizes)
    return reward, is_first, is_terminal


def step_signals(
    batch: Any, device: torch.device | str, sizes: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's reward, is_first and is_terminal (B, T) as `signal_tensors` returns them."""
    return signal_tensors(batch.reward, batch.is_first, batch.is_terminal, device, sizes)
