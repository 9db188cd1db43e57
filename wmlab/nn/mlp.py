"""A multilayer perceptron: the trunk of most heads and of the feed-forward world models."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from wmlab.core.errors import ShapeError

#: Activations by the name that configs use.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "mish": nn.Mish,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


def dense_layers(
    input_size: int,
    units: int,
    layers: int,
    norm: Callable[[int], nn.Module] | None,
    activation: Callable[[], nn.Module],
) -> list[nn.Module]:
    """`layers` x (Linear(input, units) -> [norm(units)] -> activation()), in that order; no norm
    module at all when `norm` is None. The one hidden-layer builder of MLP, the RSSM's heads and
    TD-MPC2's trunks: the order fixes the parameter names and the random draws of initialisation."""
    blocks: list[nn.Module] = []
    for _ in range(layers):
        # Keep the bias even before a norm: without it LayerNorm(W x) is blind to the scale of x,
        # and a low-dimensional input (a state vector) loses its magnitude.
        blocks.append(nn.Linear(input_size, units))
        if norm is not None:
            blocks.append(norm(units))
        blocks.append(activation())
        input_size = units
    return blocks


class MLP(nn.Module):
    """`layers` hidden layers of `hidden_size` units (Linear -> [LayerNorm] -> activation), then an
    optional linear output layer.

    x (..., input_size) -> (..., output_size), or (..., hidden_size) when `output_size` is None, so
    that the MLP can serve as a trunk under several heads.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int | None,
        hidden_size: int = 256,
        layers: int = 2,
        activation: str = "silu",
        layer_norm: bool = False,
    ):
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        self.input_size = input_size
        self.output_size = output_size
        blocks = dense_layers(
            input_size, hidden_size, layers, nn.LayerNorm if layer_norm else None, lambda: make_activation(activation)
        )
        width = hidden_size if layers else input_size
        if output_size is not None:
            blocks.append(nn.Linear(width, output_size))
        self.net = nn.Sequential(*blocks)
        #: The size of the last dimension of the output.
        self.features = width if output_size is None else output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., input_size) -> (..., features)
        if x.shape[-1:] != (self.input_size,):
            raise ShapeError(f"MLP input: expected (..., {self.input_size}), got {tuple(x.shape)}")
        return self.net(x)
