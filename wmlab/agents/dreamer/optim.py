"""Dreamer's optimisers: Adam(W) or LaProp, global-norm or adaptive gradient clipping, warm-up.

LaProp (Ziyin et al. 2020, arXiv:2002.04839) normalises each gradient by its running RMS first and
applies momentum to the normalised step, the order that DreamerV3's current code uses
(scale_by_rms, then scale_by_momentum, both debiased). Adaptive gradient clipping (Brock et al.
2021, arXiv:2102.06171) caps each tensor's gradient norm at a fraction of that tensor's norm.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from wmlab.agents.dreamer.config import OptimizerConfig
from wmlab.core.distributed import average_gradients


class LaProp(torch.optim.Optimizer):
    """v = b2 v + (1 - b2) g^2;  m = b1 m + (1 - b1) g / (sqrt(v / (1 - b2^t)) + eps);
    p -= lr * m / (1 - b1^t)  (plus decoupled weight decay lr * wd * p)."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_average"] = torch.zeros_like(parameter)
                    state["momentum"] = torch.zeros_like(parameter)
                state["step"] += 1
                step = float(state["step"])
                square, momentum = state["square_average"], state["momentum"]
                square.mul_(beta2).addcmul_(parameter.grad, parameter.grad, value=1 - beta2)
                normalised = parameter.grad / ((square / (1 - beta2**step)).sqrt_() + group["eps"])
                momentum.mul_(beta1).add_(normalised, alpha=1 - beta1)
                if group["weight_decay"]:
                    parameter.mul_(1 - group["lr"] * group["weight_decay"])
                parameter.add_(momentum, alpha=-group["lr"] / (1 - beta1**step))


class Optimizer:
    """An optimiser for one module: averages gradients across ranks, clips, warms up, steps."""

    def __init__(self, module: nn.Module, config: OptimizerConfig):
        if config.kind not in ("adam", "laprop"):
            raise ValueError(f"optimizer kind must be adam or laprop, got {config.kind!r}")
        self.module = module
        self.config = config
        self.parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
        betas = (config.beta1, config.beta2)
        if config.kind == "laprop":
            self.optimizer = LaProp(self.parameters, config.learning_rate, betas, config.epsilon, config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(
                self.parameters, config.learning_rate, betas, config.epsilon, config.weight_decay
            )
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
        with torch.no_grad():
            grads = [parameter.grad for parameter in self.parameters if parameter.grad is not None]
            norms = torch._foreach_norm(grads) if grads else []
            total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
            config = self.config
            if config.adaptive_clip > 0:
                weights = [parameter for parameter in self.parameters if parameter.grad is not None]
                weight_norms = torch._foreach_norm(weights)
                for gradient, gradient_norm, weight_norm in zip(grads, norms, weight_norms):
                    limit = config.adaptive_clip * weight_norm.clamp_min(1e-3)
                    gradient.mul_((limit / gradient_norm.clamp_min(1e-12)).clamp_max(1.0))
            if config.grad_clip > 0:
                factor = (config.grad_clip / (total + 1e-6)).clamp_max(1.0)
                torch._foreach_mul_(grads, factor)
            if config.warmup > 0:
                fraction = min(1.0, (self.updates + 1) / config.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = config.learning_rate * fraction
            self.optimizer.step()
        self.updates += 1
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
