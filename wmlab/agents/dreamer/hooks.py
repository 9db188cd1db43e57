"""Hooks into the Dreamer update: where a study's intervention enters the actor-critic learning
without becoming a branch of the core update (wmlab.studies.counterfactual, wmlab.studies.horizon).

A hook may change the imagination start states (after the world model's update, before
imagination) and the lambda-return targets (before the actor and the critic read them). The
agent builds its hooks from its config (`hooks_from_config`, so that a run directory's
config.json rebuilds the same agent) and runs them in order; a study or a test may also append
its own to `DreamerAgent.hooks`.

Shape legend: N imagination starts, H horizon, D deterministic size, S x K stochastic latent.
"""

from __future__ import annotations

import torch

from wmlab.agents.dreamer.config import DreamerConfig
from wmlab.losses.returns import horizon_weighted_returns
from wmlab.models.rssm import RSSM, State

#: Interventions of the counterfactual augmentation (DreamerConfig.counterfactual_kind).
COUNTERFACTUAL_KINDS = ("resample", "swap")


class UpdateHook:
    """The identity at both points; a hook overrides the ones it changes."""

    def starts(self, model: RSSM, starts: State, generator: torch.Generator) -> State:
        """Start states {"deter" (N, D), "stoch" (N, S * K)} -> the states imagination starts from
        (the same N); random numbers from `generator`, the agent's."""
        return starts

    def targets(self, returns: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """lambda-returns (N, H) and the critic's values of the states they start from (N, H) ->
        the targets of the actor and the critic (N, H)."""
        return returns


class CounterfactualStarts(UpdateHook):
    """Counterfactual augmentation (wmlab.studies.counterfactual): intervene on the stochastic
    latent z of round(fraction * N) of the N start states, chosen at random, and keep their
    recurrent state h, so that the actor and critic also learn from states the replay never held.
    "resample": z ~ p(z | h); "swap": the chosen starts pass their z round a random cycle, so
    that each takes the z of another chosen start. The number of starts is unchanged (the
    intervened starts replace the originals: the same cost per update as plain Dreamer); their
    continue flags stay their own."""

    def __init__(self, fraction: float, kind: str = "resample"):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"counterfactual_fraction must lie in [0, 1], got {fraction}")
        if kind not in COUNTERFACTUAL_KINDS:
            raise ValueError(f"counterfactual_kind must be one of {', '.join(COUNTERFACTUAL_KINDS)}, got {kind!r}")
        self.fraction, self.kind = fraction, kind

    def starts(self, model: RSSM, starts: State, generator: torch.Generator) -> State:
        N = starts["deter"].shape[0]
        count = min(N, int(round(self.fraction * N)))
        if count == 0 or (self.kind == "swap" and count < 2):
            return starts
        device = starts["deter"].device
        chosen = torch.randperm(N, generator=generator, device=device)[:count]  # (count,)
        with torch.no_grad():
            if self.kind == "resample":
                replacement = model.sample(model.prior(starts["deter"][chosen]), model.draw_noise((count,)))
            else:
                # chosen is in random order, so shifting it by one is a random cycle: no start keeps its own z.
                replacement = starts["stoch"][chosen.roll(-1)]
        stoch = starts["stoch"].index_put((chosen,), replacement.to(starts["stoch"].dtype))
        return {"deter": starts["deter"], "stoch": stoch}


class HorizonConfidence(UpdateHook):
    """Horizon-aware targets c_t * R_t + (1 - c_t) * v_t with c_t = decay ** t at imagination
    depth t (wmlab.losses.returns.horizon_weighted_returns; wmlab.studies.horizon)."""

    def __init__(self, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"horizon_confidence must lie in [0, 1], got {decay}")
        self.decay = decay

    def targets(self, returns: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return horizon_weighted_returns(returns, values, self.decay)


def hooks_from_config(config: DreamerConfig) -> list[UpdateHook]:
    """The study hooks that `config` switches on (none for every paper's preset). Invalid settings
    raise ValueError even where they switch nothing on."""
    counterfactual = CounterfactualStarts(config.counterfactual_fraction, config.counterfactual_kind)
    horizon = HorizonConfidence(config.horizon_confidence)
    hooks: list[UpdateHook] = []
    if counterfactual.fraction > 0:
        hooks.append(counterfactual)
    if horizon.decay < 1.0:
        hooks.append(horizon)
    return hooks
