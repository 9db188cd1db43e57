"""Categorical latents and actions: uniform mixing and straight-through one-hot samples.

- Unimix (DreamerV3, arXiv:2301.04104, "1% unimix"): probabilities (1 - u) * softmax + u / K, so
  that no class has probability near zero and KL terms stay bounded.
- Straight-through gradients (DreamerV2, arXiv:2010.02193, Algorithm 1): the forward value is the
  one-hot sample, the gradient is that of the probabilities.

Random numbers come from an explicit generator (or the global one when None), so that a caller
that checkpoints its generator can resume exactly.

Shape legend: ... leading dimensions, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unimix_logits(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities (..., K) of (1 - unimix) * softmax(logits) + unimix / K."""
    if unimix <= 0:
        return log_softmax(logits)
    probabilities = (1 - unimix) * softmax(logits) + unimix / logits.shape[-1]
    return probabilities.log()


def sample_one_hot(
    logits: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """A one-hot sample (..., K) of Categorical(logits) with straight-through gradients.

    `uniform` (...) in [0, 1) may be given (drawn ahead for a whole sequence); otherwise it is
    drawn from `generator` on the logits' device. Sampling inverts the cumulative distribution,
    which needs one uniform number per variable rather than K Gumbel draws.
    """
    probabilities = softmax(logits)
    if uniform is None:
        uniform = torch.rand(logits.shape[:-1], generator=generator, device=logits.device, dtype=logits.dtype)
    index = (probabilities.cumsum(-1) < uniform.unsqueeze(-1)).sum(-1).clamp_max(logits.shape[-1] - 1)
    one_hot = F.one_hot(index, logits.shape[-1]).to(logits.dtype)
    return one_hot + probabilities - probabilities.detach()


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (...) of Categorical(logits (..., K)), in nats."""
    log_probabilities = log_softmax(logits)
    return -(log_probabilities.exp() * log_probabilities).sum(-1)


# PyTorch's CPU softmax kernels are several times slower than plain tensor ops when the last
# dimension is tiny (K = 4 classes of DreamerV3's size1m, a handful of actions), and faster when it
# is large (255 two-hot bins); these choose by size.
_SMALL = 16


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension."""
    if logits.shape[-1] > _SMALL:
        return logits.softmax(-1)
    exponentials = (logits - logits.amax(-1, keepdim=True)).exp()
    return exponentials / exponentials.sum(-1, keepdim=True)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dimension."""
    if logits.shape[-1] > _SMALL:
        return logits.log_softmax(-1)
    shifted = logits - logits.amax(-1, keepdim=True)
    return shifted - shifted.exp().sum(-1, keepdim=True).log()
