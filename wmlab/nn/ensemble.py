"""An ensemble of MLPs evaluated as one batched computation (TD-MPC2's Q ensemble).

Every member has the same shape, so the weights of a layer are stacked into one (E, in, out)
tensor and all members run in a single batched matmul instead of E small ones. A subset of
members can be evaluated on its own (`members=`), which is how a "min of two random Qs" costs two
members rather than E.

Shape legend: E members, D features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wmlab.core.errors import ShapeError
from wmlab.nn.activations import activation_module


def member_parameters(
    layer: nn.Module, members: torch.Tensor | None, detach: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A member-stacked layer's (weight, bias): only the `members` selected (all when None), and
    cut from the graph when `detach` (the Q-loss's target and the policy's frozen Qs)."""
    weight, bias = layer.weight, layer.bias
    if members is not None:
        weight, bias = weight[members], bias[members]
    if detach:
        weight, bias = weight.detach(), bias.detach()
    return weight, bias


class EnsembleLinear(nn.Module):
    """E independent linear maps: x (E, M, in) -> (E, M, out)."""

    def __init__(self, members: int, input_size: int, output_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, input_size, output_size))
        self.bias = nn.Parameter(torch.zeros(members, 1, output_size))
        # nn.Linear's default initialisation, member by member.
        bound = 1 / math.sqrt(input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        weight, bias = member_parameters(self, members, detach)
        return torch.baddbmm(bias, x, weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with a learned scale and shift per member: x (E, M, D) -> (E, M, D)."""

    def __init__(self, members: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))
        self.eps = eps

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        weight, bias = member_parameters(self, members, detach)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * weight + bias


class EnsembleMLP(nn.Module):
    """E MLPs of `layers` hidden layers (Linear -> [Dropout on the first] -> LayerNorm ->
    activation), then a linear output layer; the TD-MPC2 block (arXiv:2310.16828, Sec. 3.1 and
    Appendix on the architecture) with the members batched.

    x (..., input_size), the same for every member -> (E', ..., output_size) for the E' members
    selected (all by default).
    """

    def __init__(
        self,
        members: int,
        input_size: int,
        output_size: int,
        hidden_size: int,
        layers: int = 2,
        activation: str = "mish",
        dropout: float = 0.0,
    ):
        super().__init__()
        if members < 1 or layers < 1:
            raise ValueError(f"an ensemble needs at least one member and one hidden layer, got {members} and {layers}")
        self.members, self.input_size, self.output_size = members, input_size, output_size
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = input_size
        for _ in range(layers):
            self.linears.append(EnsembleLinear(members, width, hidden_size))
            self.norms.append(EnsembleLayerNorm(members, hidden_size))
            width = hidden_size
        self.output = EnsembleLinear(members, width, output_size)
        self.activation = activation_module(activation)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        members: torch.Tensor | None = None,
        detach: bool = False,
        dropout: bool = True,
    ) -> torch.Tensor:
        """members: int64 indices of the members to evaluate (None: all); detach: use the weights
        without letting gradients reach them (gradients still flow to x); dropout: apply dropout
        in training mode (off to evaluate the members deterministically)."""
        if x.shape[-1] != self.input_size:
            raise ShapeError(f"ensemble input: expected (..., {self.input_size}), got {tuple(x.shape)}")
        count = self.members if members is None else int(members.shape[0])
        leading = x.shape[:-1]
        h = x.reshape(1, -1, self.input_size).expand(count, -1, -1)
        for index, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            h = linear(h, members, detach)
            if index == 0 and dropout and self.dropout > 0:
                h = F.dropout(h, self.dropout, training=self.training)
            h = self.activation(norm(h, members, detach))
        return self.output(h, members, detach).reshape(count, *leading, self.output_size)
