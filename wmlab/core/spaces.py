"""Gymnasium spaces: as JSON (how a dataset's manifest and a run's config.json record them), the
action layout every model and agent reads from an action space, and a Box's bounds with their map
to [-1, 1] (the models' and the planners' action units)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.core.errors import DatasetError, IncompatibleSpaceError, ShapeError
from wmlab.core.shapes import format_expected, shape_matches


def action_layout(action_space: spaces.Space, owner: str, bounded: bool = False) -> tuple[int, bool]:
    """(A, discrete) for a 1-D Box (A dimensions) or a Discrete space starting at 0 (A choices).

    Indices enter one-hot encodings as they are, so a Discrete space that starts elsewhere is refused.
    With `bounded`, a Box needs finite bounds (the owner scales its actions to [-1, 1]). Errors
    name `owner` ("the RSSM", "TD-MPC2").
    """
    if isinstance(action_space, spaces.Discrete):
        if int(action_space.start) != 0:
            raise IncompatibleSpaceError(f"{owner} takes Discrete actions that start at 0, got {action_space}")
        return int(action_space.n), True
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        if bounded and not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise IncompatibleSpaceError(
                f"{owner} scales Box actions to [-1, 1] and needs finite bounds, got {action_space}"
            )
        return int(action_space.shape[0]), False
    kind = "a bounded 1-D Box" if bounded else "a 1-D Box"
    raise IncompatibleSpaceError(f"{owner} takes {kind} or a Discrete action space, got {action_space}")


def discrete_action_input(
    action: torch.Tensor,
    action_size: int,
    leading: tuple[str, ...],
    sizes: dict[str, int],
    dtype: torch.dtype = torch.float32,
    check_range: bool = False,
) -> torch.Tensor:
    """Discrete actions as model inputs (*leading, K): indices (*leading) become one-hot; float
    one-hot or probability vectors (*leading, K) are kept as given, so that gradients flow through a
    relaxed policy. Binds the letters of `leading` in `sizes`. With `check_range`, indices outside
    [0, K) are refused with their range (it reads the indices' extremes: a device sync)."""
    one_hot = shape_matches(tuple(action.shape), (*leading, action_size), sizes)
    if one_hot is not None and action.is_floating_point():
        sizes.update(one_hot)
        return action.to(dtype)
    indices = shape_matches(tuple(action.shape), leading, sizes)
    if indices is None:
        raise ShapeError(
            f"action: expected indices {format_expected(leading, sizes)} or one-hot "
            f"{format_expected((*leading, action_size), sizes)}, got {tuple(action.shape)}"
        )
    if check_range and action.numel() and (int(action.min()) < 0 or int(action.max()) >= action_size):
        raise ShapeError(
            f"action: indices must lie in [0, {action_size}), got [{int(action.min())}, {int(action.max())}]"
        )
    sizes.update(indices)
    return F.one_hot(action.long(), action_size).to(dtype)


class BoxBounds(nn.Module):
    """The bounds of a 1-D Box with finite bounds, and the affine map between its actions and
    [-1, 1]: action = centre + half_range * unit. The bounds are float32 buffers (A,) that follow
    their owner's `.to(device)` and stay out of its checkpoints; `min_half_range` > 0 keeps a
    dimension with equal bounds from dividing by zero."""

    def __init__(self, action_space: spaces.Box, min_half_range: float = 0.0):
        super().__init__()
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        half_range = (high - low) / 2
        if min_half_range > 0:
            half_range = half_range.clamp_min(min_half_range)
        self.size = int(low.shape[0])
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        self.register_buffer("centre", (low + high) / 2, persistent=False)
        self.register_buffer("half_range", half_range, persistent=False)

    def to_unit(self, action: torch.Tensor) -> torch.Tensor:  # (..., A) -> (..., A)
        """Environment actions -> (action - centre) / half_range: [-1, 1] inside the bounds, not clipped."""
        return (action - self.centre) / self.half_range

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:  # (..., A) -> (..., A)
        """Actions in [-1, 1] -> centre + half_range * unit: the bounds' range (not clipped)."""
        return self.centre + self.half_range * unit

    def clamp(self, actions: torch.Tensor) -> torch.Tensor:  # (..., A) -> (..., A)
        """Actions clipped into the bounds, dimension by dimension."""
        return torch.maximum(torch.minimum(actions, self.high), self.low)


def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A JSON description of a gymnasium space that `space_from_description` turns back into it."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: describe_space(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": np.dtype(space.dtype).name,
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise DatasetError(f"cannot describe the space {space} in a dataset manifest")


def space_from_description(description: Mapping[str, Any]) -> spaces.Space:
    kind = description["type"]
    if kind == "Dict":
        return spaces.Dict({key: space_from_description(sub) for key, sub in description["spaces"].items()})
    if kind == "Discrete":
        return spaces.Discrete(description["n"], start=description.get("start", 0))
    if kind == "Box":
        shape, dtype = tuple(description["shape"]), np.dtype(description["dtype"])
        low = np.broadcast_to(_bound_from_json(description["low"]), shape).astype(dtype)
        high = np.broadcast_to(_bound_from_json(description["high"]), shape).astype(dtype)
        return spaces.Box(low, high, shape=shape, dtype=dtype)
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(description["nvec"])
    if kind == "MultiBinary":
        return spaces.MultiBinary(description["n"])
    raise ValueError(f"unknown space type {kind!r}")


def _bound_to_json(bound: np.ndarray) -> Any:
    """One number when every element shares it (images: 0 and 255), else nested lists.

    JSON has no infinity, so unbounded elements are written as the strings "inf" / "-inf".
    """
    values = np.asarray(bound)
    if values.dtype.kind in "iub":
        encoded = values.astype(np.int64).astype(object)
    else:
        encoded = np.vectorize(lambda x: float(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf"), otypes=[object])(
            values
        )
    if encoded.size and np.all(values == values.flat[0]):
        return encoded.flat[0]
    return encoded.tolist()


def _bound_from_json(bound: Any) -> np.ndarray:
    return np.asarray(np.vectorize(float, otypes=[np.float64])(np.asarray(bound, dtype=object)))
