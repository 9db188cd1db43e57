"""Dreamer's optimiser for one module: the gradients from a loss or given, averaged across ranks,
then the shared clipped, warmed-up step of wmlab.core.optim (Adam(W) or LaProp)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wmlab.core.distributed import average_gradients
from wmlab.core.optim import OptimizerConfig, clipped_step, make_optimizer


class Optimizer:
    """An optimiser for one module: averages gradients across ranks, clips, warms up, steps."""

    def __init__(self, module: nn.Module, config: OptimizerConfig):
        self.module = module
        self.config = config
        self.parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
        self.optimizer = make_optimizer(self.parameters, config)
        self.updates = 0

    def step(self, gradients: list[torch.Tensor] | None = None, loss: torch.Tensor | None = None) -> torch.Tensor:
        """One update from `gradients` (one per parameter, e.g. from torch.autograd.grad) or from
        `loss.backward()`; returns the global gradient norm before clipping (a 0-d tensor)."""
        for parameter in self.parameters:
            parameter.grad = None
        if gradients is not None:
            for parameter, gradient in zip(self.parameters, gradients):
                parameter.grad = gradient
        elif loss is not None:
            loss.backward()
        average_gradients(self.module)  # a no-op in one process; the mean over ranks under torchrun
        total = clipped_step(self.optimizer, self.parameters, self.config, self.updates)
        self.updates += 1
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
