"""KL terms of latent-variable world models, with free nats and KL balancing.

- Free nats (PlaNet, arXiv:1811.04551, Sec. 3): KL below a threshold is not penalised, so the
  model stops squeezing the posterior towards the prior once they are close enough.
- KL balancing (DreamerV2, arXiv:2010.02193, Sec. 2 and Algorithm 2; DreamerV3, Eq. 5 of
  arXiv:2301.04104v1): the same KL written twice with a stop-gradient on either side, so that
  the prior is trained towards the posterior (the "dynamics" term) faster than the posterior is
  regularised towards the prior (the "representation" term).

Shape legend: ... leading dimensions (B, T), S latent variables, K classes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from wmlab.nn.categorical import log_softmax


class KLTerms(NamedTuple):
    """loss: the weighted, clipped objective; dynamics / representation: the unclipped KL values
    (equal in value, they differ only in where the gradient goes)."""

    loss: torch.Tensor
    dynamics: torch.Tensor
    representation: torch.Tensor


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) (..., S) between categoricals given by logits (..., S, K), summed over K."""
    log_p = log_softmax(logits_p)
    return (log_p.exp() * (log_p - log_softmax(logits_q))).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) (..., S) between diagonal Gaussians, per dimension."""
    variance_ratio = (std_p / std_q).pow(2)
    return 0.5 * (variance_ratio + ((mean_p - mean_q) / std_q).pow(2) - 1 - variance_ratio.log())


def _balance(
    dynamics: torch.Tensor,
    representation: torch.Tensor,
    free_nats: float,
    dyn_scale: float,
    rep_scale: float,
    average_first: bool,
) -> KLTerms:
    if average_first:
        # DreamerV1/V2 ("free_avg"): free nats bound the batch mean, not each step.
        dynamics, representation = dynamics.mean(), representation.mean()
    loss = dyn_scale * dynamics.clamp_min(free_nats) + rep_scale * representation.clamp_min(free_nats)
    return KLTerms(loss, dynamics, representation)


def kl_balanced(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    free_nats: float,
    dyn_scale: float,
    rep_scale: float,
    average_first: bool = False,
) -> KLTerms:
    """Balanced KL between categorical posterior and prior logits (..., S, K); values (...) summed
    over the S variables (a scalar with `average_first`).

        dyn = KL(sg(post) || prior),  rep = KL(post || sg(prior))
        loss = dyn_scale * max(free_nats, dyn) + rep_scale * max(free_nats, rep)

    Eq. 5, arXiv:2301.04104v1 (DreamerV3: dyn 0.5, rep 0.1 in the paper, 1.0 / 0.1 in the
    authors' current configs, free nats 1); DreamerV2's balancing alpha = 0.8 is
    dyn_scale = 0.8 * beta, rep_scale = 0.2 * beta (arXiv:2010.02193, Algorithm 2).
    Pass unimixed logits (wmlab.nn.categorical.unimix_logits) to get DreamerV3's mixture KL.
    """
    dynamics = categorical_kl(post_logits.detach(), prior_logits).sum(-1)
    representation = categorical_kl(post_logits, prior_logits.detach()).sum(-1)
    return _balance(dynamics, representation, free_nats, dyn_scale, rep_scale, average_first)


def kl_balanced_gaussian(
    post_mean: torch.Tensor,
    post_std: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_std: torch.Tensor,
    free_nats: float,
    dyn_scale: float,
    rep_scale: float,
    average_first: bool = False,
) -> KLTerms:
    """`kl_balanced` for diagonal Gaussian latents (..., S) (DreamerV2 balances Gaussians too)."""
    dynamics = gaussian_kl(post_mean.detach(), post_std.detach(), prior_mean, prior_std).sum(-1)
    representation = gaussian_kl(post_mean, post_std, prior_mean.detach(), prior_std.detach()).sum(-1)
    return _balance(dynamics, representation, free_nats, dyn_scale, rep_scale, average_first)


def gaussian_kl_free_nats(
    post_mean: torch.Tensor,
    post_std: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_std: torch.Tensor,
    free_nats: float,
    average_first: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(free_nats, KL(post || prior)), KL) for Gaussian latents (..., S), gradients into both
    sides (the unbalanced KL of PlaNet's Eq. 3, arXiv:1811.04551, and DreamerV1's Eq. 10,
    arXiv:1912.01603). With `average_first` (DreamerV1's code) the clip applies to the mean over
    all leading dimensions and both results are scalars; otherwise they are (...)."""
    kl = gaussian_kl(post_mean, post_std, prior_mean, prior_std).sum(-1)
    if average_first:
        kl = kl.mean()
    return kl.clamp_min(free_nats), kl
