"""One optimiser setting for every learner: Adam(W) or LaProp, global-norm or adaptive gradient
clipping, linear warm-up.

A learner holds an `OptimizerConfig` per optimiser it owns (Dreamer's world model, actor and critic;
DIAMOND's denoiser and reward / end model; IRIS's tokenizer and transformer; the actor-critic
learned in imagination), builds the optimiser with `make_optimizer` (or `make_module_optimizer`,
which can spare biases, norms and embeddings the weight decay) and, once the gradients are in
place, calls `clipped_step`.

LaProp (Ziyin et al. 2020, arXiv:2002.04839) normalises each gradient by its running RMS first and
applies momentum to the normalised step, the order that DreamerV3's current code uses
(scale_by_rms, then scale_by_momentum, both debiased). Adaptive gradient clipping (Brock et al.
2021, arXiv:2102.06171) caps each tensor's gradient norm at a fraction of that tensor's norm.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wmlab.core.config import Config, ranges


@dataclass(frozen=True)
class OptimizerConfig(Config):
    """One optimiser (the defaults: plain Adam, no clipping, no warm-up)."""

    limits = ranges(positive="learning_rate epsilon", non_negative="weight_decay grad_clip adaptive_clip warmup")

    kind: str = "adam"
    """"adam" (AdamW: decoupled weight decay) or "laprop" (DreamerV3's current optimiser:
    RMS-normalise the gradient, then momentum)."""
    learning_rate: float = 1e-4
    """Step size after warm-up."""
    epsilon: float = 1e-8
    """Added to the RMS denominator."""
    beta1: float = 0.9
    """Momentum decay."""
    beta2: float = 0.999
    """Decay of the squared-gradient average."""
    weight_decay: float = 0.0
    """Decoupled weight decay per step, times the learning rate."""
    decay: str = "all"
    """Which parameters the weight decay shrinks: "all", or "weights": those of linear,
    convolution and LSTM layers, not biases, norms or embeddings (DIAMOND's configure_opt, after
    minGPT; with `make_module_optimizer`)."""
    grad_clip: float = 0.0
    """Largest global gradient norm (0: off)."""
    adaptive_clip: float = 0.0
    """Adaptive gradient clipping: each tensor's gradient norm is capped at this fraction of the
    tensor's norm (at least 1e-3), as in DreamerV3's current optimiser (0: off)."""
    warmup: int = 0
    """Updates over which the learning rate ramps linearly from 0 (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ("adam", "laprop"):
            raise ValueError(f"optimizer kind must be adam or laprop, got {self.kind!r}")
        if self.decay not in ("all", "weights"):
            raise ValueError(f"optimizer decay must be all or weights, got {self.decay!r}")


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


def make_optimizer(parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]], config: OptimizerConfig):
    """The optimiser `config` describes over `parameters` (or parameter groups, whose own settings,
    such as a group's weight decay, win over the config's)."""
    betas = (config.beta1, config.beta2)
    if config.kind == "laprop":
        return LaProp(parameters, config.learning_rate, betas, config.epsilon, config.weight_decay)
    return torch.optim.AdamW(parameters, config.learning_rate, betas, config.epsilon, config.weight_decay)


#: The layers whose weights decay under `decay="weights"` (DIAMOND's configure_opt).
DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTMCell, nn.LSTM)


def weight_decay_groups(
    module: nn.Module,
    weight_decay: float,
    layers: tuple[type[nn.Module], ...] = DECAYED_LAYERS,
    leave_out: tuple[str, ...] = (),
    not_decayed: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Two parameter groups of `module`, in its parameter order: the weights of `layers` decay by
    `weight_decay`; every other parameter (biases, norms, embeddings) does not. Parameters whose
    name starts with one of `leave_out` (another optimiser's) are in neither; layers whose name
    contains one of `not_decayed` keep their weights too."""
    decayed = {
        id(parameter)
        for layer_name, layer in module.named_modules()
        if isinstance(layer, layers) and not any(part in layer_name for part in not_decayed)
        for name, parameter in layer.named_parameters(recurse=False)
        if name.startswith("weight")
    }
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not name.startswith(leave_out):
            (decay if id(parameter) in decayed else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_module_optimizer(module: nn.Module, config: OptimizerConfig):
    """The optimiser of every parameter of `module`, its weight decay on those `config.decay` names."""
    if config.decay == "weights":
        return make_optimizer(weight_decay_groups(module, config.weight_decay), config)
    return make_optimizer(module.parameters(), config)


@torch.no_grad()
def clipped_step(
    optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter], config: OptimizerConfig, updates: int
) -> torch.Tensor:
    """One step of `optimizer` on the gradients already in `parameters` (the optimiser's own):
    adaptive then global-norm clipping, the learning rate warmed up for the update numbered
    `updates` (counted from 0). Returns the global gradient norm before clipping (a 0-d tensor)."""
    weights = [parameter for parameter in parameters if parameter.grad is not None]
    grads = [parameter.grad for parameter in weights]
    norms = torch._foreach_norm(grads) if grads else []
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    if config.adaptive_clip > 0:
        weight_norms = torch._foreach_norm(weights)
        for gradient, gradient_norm, weight_norm in zip(grads, norms, weight_norms):
            limit = config.adaptive_clip * weight_norm.clamp_min(1e-3)
            gradient.mul_((limit / gradient_norm.clamp_min(1e-12)).clamp_max(1.0))
    if config.grad_clip > 0:
        factor = (config.grad_clip / (total + 1e-6)).clamp_max(1.0)
        torch._foreach_mul_(grads, factor)
    if config.warmup > 0:
        fraction = min(1.0, (updates + 1) / config.warmup)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * fraction
    optimizer.step()
    return total
