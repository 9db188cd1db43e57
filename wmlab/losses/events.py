"""Losses and scores of sparse events (a nonzero reward, the end of an episode) predicted per step
by a world model's reward and end heads.

In MinAtar and Atari most steps carry no reward and only one step in tens ends an episode, so a
plain mean cross-entropy is lowest predicting "nothing happens" everywhere (the base rate), and
an agent trained in the model's imagination then sees returns that do not depend on its actions.
Weighing the event steps w times the others (w = 1: the plain mean, the papers') moves the
decision threshold towards the events: w = (1 - p) / p balances two classes of rates p and 1 - p.

Shape legend: ... any leading shape (one entry per predicted step).
"""

from __future__ import annotations

import torch

from wmlab.core.errors import ShapeError


def event_weighted_mean(
    losses: torch.Tensor, events: torch.Tensor, sparse_weight: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """sum(w_i l_i) / sum(w_i) over the per-step losses (...), with w_i = valid_i (1 where None)
    times `sparse_weight` where events_i (bool (...)) is set, 1 elsewhere."""
    if losses.shape != events.shape or (valid is not None and valid.shape != losses.shape):
        shapes = (tuple(losses.shape), tuple(events.shape), None if valid is None else tuple(valid.shape))
        raise ShapeError(f"losses, events and valid must have one shape, got {shapes}")
    if sparse_weight <= 0:
        raise ValueError(f"sparse_weight must be positive, got {sparse_weight}")
    weights = torch.where(events.bool(), sparse_weight, 1.0).to(losses.dtype)
    if valid is not None:
        weights = weights * valid.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1e-8)


@torch.no_grad()
def event_scores(prefix: str, predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision and recall of predicted events (bool (...)) against the actual ones (bool (...)):
    {prefix_precision, prefix_recall}, each 0 where its denominator is empty."""
    hits = (predicted & actual).sum().float()
    return {
        f"{prefix}_precision": hits / predicted.sum().clamp_min(1).float(),
        f"{prefix}_recall": hits / actual.sum().clamp_min(1).float(),
    }


def calibrated_logits(
    logits: torch.Tensor, event_classes: tuple[int, ...] | None, sparse_weight: float
) -> torch.Tensor:
    """Undo, at prediction, the event weighting of the loss: a classifier trained with event steps
    weighted w converges to odds w times the data's (the weighted likelihood's optimum is
    p_w(event) proportional to w p(event)), so subtracting log w from the event classes' logits
    (..., K) gives calibrated probabilities again (a prior shift, e.g. Elkan 2001). With
    `event_classes` None the logits are of a single binary event (...). w = 1 returns them as
    they are."""
    if sparse_weight == 1.0:
        return logits
    shift = torch.log(torch.tensor(float(sparse_weight), dtype=logits.dtype, device=logits.device))
    if event_classes is None:
        return logits - shift
    offsets = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    offsets[list(event_classes)] = shift
    return logits - offsets
