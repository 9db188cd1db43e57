"""Action grounding (open problem 6): do the latent actions a model discovered in unlabeled video
line up with the real controls?

On held-out video whose true actions were kept apart (wmlab.data.video: `hidden_actions`), the
model reads its latent action at every step that has an earlier frame (`infer_actions`), and the
pairs (true action, latent action) give

    confusion[i, k]   steps whose true action is i and latent action k
    I(true; latent) = sum_ik p(i, k) log2 p(i, k) / (p(i) p(k))     bits (Cover & Thomas, Eq. 2.28)
    normalised MI   = I / H(true)   in [0, 1]: 1 when the latent action determines the true one
                      (None when only one true class occurs)
    purity          = sum_k max_i confusion[i, k] / N: accuracy of the best map latent -> true
    chance purity   = max_i p(i): what a latent action carrying nothing scores

True actions are classes: a Discrete action is its own class; a Box action becomes the sign of its
largest-magnitude dimension (2 A classes: for a 2-D move, right / left / up / down), and steps
whose Box action is below `still_below` in every dimension form one more class "still".

`controllability` is Genie's delta-PSNR (arXiv:2402.15391, Sec. 3) on the same video: the model
filters `context` real frames with the latent actions it reads in them, then generates the
following frames once with the latent actions it reads in the real future and once with latent
actions drawn uniformly at random, under the same sampling noise; delta-PSNR_t = PSNR(x_t, x^_t)
- PSNR(x_t, x^'_t) (wmlab.eval.world_model_metrics.controllability).

Shape legend: N steps, B windows, T frames, K latent actions, I true action classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wmlab.core.errors import WmlabError
from wmlab.eval import world_model_metrics as metrics

# ----------------------------------------------------------------------------------------------
# Pure measures


def action_classes(
    actions: np.ndarray, action_space: Any = None, still_below: float = 0.0
) -> tuple[np.ndarray, list[str]]:
    """True actions (N, ...) -> (classes (N,) int, class names). Discrete: the action itself;
    Box (N, A): 2 * dim + (0 if positive else 1) of the largest-magnitude dimension, and class
    2 A ("still") where every |a| < still_below."""
    actions = np.asarray(actions)
    if actions.ndim == 1 or (
        actions.ndim == 2 and actions.shape[1] == 1 and not np.issubdtype(actions.dtype, np.floating)
    ):
        classes = actions.reshape(-1).astype(np.int64)
        count = int(getattr(action_space, "n", classes.max(initial=0) + 1))
        return classes, [str(index) for index in range(count)]
    flat = actions.reshape(len(actions), -1).astype(np.float64)
    dims = flat.shape[1]
    dominant = np.abs(flat).argmax(1)
    sign = flat[np.arange(len(flat)), dominant] < 0
    classes = 2 * dominant + sign.astype(np.int64)
    names = [f"{'+' if s == 0 else '-'}{'xyz'[d] if dims <= 3 else d}" for d in range(dims) for s in (0, 1)]
    if still_below > 0:
        classes = np.where(np.abs(flat).max(1) < still_below, 2 * dims, classes)
        names.append("still")
    return classes, names


def confusion_matrix(true: np.ndarray, latent: np.ndarray, true_count: int, latent_count: int) -> np.ndarray:
    """Counts (I, K) of steps with true class i and latent action k."""
    matrix = np.zeros((true_count, latent_count), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(latent, dtype=np.int64)), 1)
    return matrix


def mutual_information(confusion: np.ndarray) -> float:
    """I(true; latent) in bits from a confusion matrix (I, K) of counts."""
    joint = confusion / max(confusion.sum(), 1)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    present = joint > 0
    return float((joint[present] * np.log2(joint[present] / outer[present])).sum())


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log2(p)).sum())


def grounding_scores(confusion: np.ndarray) -> dict[str, float]:
    """Mutual information (bits), normalised MI, purity and chance purity of a confusion matrix (I, K)."""
    total = max(int(confusion.sum()), 1)
    information = mutual_information(confusion)
    true_entropy = entropy_bits(confusion.sum(1))
    return {
        "mutual_information_bits": information,
        "normalised_mutual_information": information / true_entropy if true_entropy > 0 else None,  # one true class
        "true_entropy_bits": true_entropy,
        "purity": float(confusion.max(0).sum() / total),
        "chance_purity": float(confusion.sum(1).max() / total),
        "latent_codes_used": int((confusion.sum(0) > 0).sum()),
        "steps": int(confusion.sum()),
    }


# ----------------------------------------------------------------------------------------------
# On a model and video


def _windows(video, sequences: int, length: int, seed: int):
    longest = max(len(frames) for frames in video.frames)
    length = min(length, longest)
    return video.sample_with_actions(sequences, length, np.random.default_rng(seed))


def grounding(
    model: Any, video, sequences: int = 64, length: int | None = None, seed: int = 0, still_below: float = 0.0
) -> dict[str, Any]:
    """Confusion matrix, mutual information and purity between the latent actions `model`
    reads in `sequences` windows of `video` (a VideoDataset with hidden_actions) and the true ones."""

    if video.hidden_actions is None:
        raise WmlabError(
            "grounding needs video whose true actions were recorded apart (a `wmlab record` dataset with actions)"
        )
    length = length or model.context
    batch, true_actions = _windows(video, sequences, length, seed)
    if isinstance(model, torch.nn.Module):
        model.eval()
    latent = model.infer_actions(batch.obs, batch.is_first).cpu().numpy()  # (B, T)
    steps = np.ones(latent.shape, dtype=bool)
    steps[:, 0] = False
    steps &= ~np.asarray(batch.is_first)
    classes, names = action_classes(true_actions[steps], video.action_space, still_below)
    codes = int(model.config.action_codes)
    confusion = confusion_matrix(classes, latent[steps], len(names), codes)
    return {
        "model": type(model).__name__,
        "sequences": sequences,
        "length": int(batch.reward.shape[1]),
        "seed": seed,
        "true_classes": names,
        "confusion": confusion.tolist(),
        **grounding_scores(confusion),
    }


def code_use(model: Any, video, sequences: int = 64, seed: int = 0) -> dict[str, Any]:
    """Whether the latent action model's decoder uses its code, on windows of `video`: mean squared
    next-frame error (pixels in [0, 1]) with the codes the encoder reads, with codes drawn
    uniformly at random, and of copying the last frame; the share of pixels that change per
    step; and how often each code is read (its perplexity). A decoder that ignores its code scores
    the same with random codes: then the codes need not carry the action, and grounding fails."""
    import torch

    batch, _ = _windows(video, sequences, model.context, seed)
    frames = torch.as_tensor(batch.obs["image"], device=model.device).float() / 255.0
    segments = model.segments(torch.as_tensor(batch.is_first, device=model.device))
    valid = ~torch.as_tensor(batch.is_first, device=model.device)[:, 1:]  # (B, T - 1) with an earlier frame
    generator = torch.Generator().manual_seed(seed)
    lam = model.latent_action
    with torch.no_grad():
        read = lam.encode(frames, segments)
        drawn = torch.randint(0, int(model.config.action_codes), read.indices.shape, generator=generator)
        random_codes = lam.quantizer.lookup(drawn.to(model.device))
        target = frames[:, 1:]

        def error(prediction: torch.Tensor) -> float:
            per_step = (prediction - target).pow(2).flatten(2).mean(-1)
            return float(per_step[valid].mean())

        counts = torch.bincount(read.indices[:, 1:][valid], minlength=int(model.config.action_codes)).float()
        share = counts / counts.sum().clamp_min(1)
        changed = (frames[:, 1:] - frames[:, :-1]).abs().amax(-1) > 0.5 / 255
        return {
            "next_frame_error_read_codes": error(lam.predict_next(frames, read.quantized, segments)),
            "next_frame_error_random_codes": error(lam.predict_next(frames, random_codes, segments)),
            "next_frame_error_copy_last": error(frames[:, :-1]),
            "changed_pixel_share": float(changed.float().flatten(2).mean(-1)[valid].mean()),
            "code_shares": share.tolist(),
            "code_perplexity": float(torch.exp(-(share[share > 0] * share[share > 0].log()).sum())),
        }


def latent_action_batch(model: Any, batch):
    """The batch with its action replaced by the latent actions the model reads in its frames."""
    actions = model.infer_actions(batch.obs, batch.is_first).cpu().numpy()
    return dataclasses.replace(batch, action=actions)


def controllability(
    model: Any, video, sequences: int = 32, context: int = 2, horizon: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Genie's delta-PSNR per step on windows of `video`: latent actions read from the real future
    against latent actions drawn uniformly (common random numbers)."""

    horizon = horizon or (model.context - context)
    batch, _ = _windows(video, sequences, context + horizon, seed)
    if isinstance(model, torch.nn.Module):
        model.eval()
    batch = latent_action_batch(model, batch)
    return metrics.controllability(
        model, batch, context, random_actions=uniform_actions(int(model.config.action_codes)), seed=seed
    )


def uniform_actions(count: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """draw(actions (B, L), rng) -> actions of the same shape drawn uniformly from 0 .. count - 1:
    Genie's random actions for delta-PSNR."""

    def draw(actions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, count, size=actions.shape).astype(actions.dtype)

    return draw


# ----------------------------------------------------------------------------------------------
# Reporting


def summary(result: dict[str, Any]) -> str:
    """One line for the terminal."""
    parts = []
    grounded = result.get("grounding")
    if grounded:
        normalised = grounded["normalised_mutual_information"]
        share = "n/a" if normalised is None else f"{normalised:.3f}"
        parts.append(
            f"MI = {grounded['mutual_information_bits']:.3f} bits (normalised {share}), purity {grounded['purity']:.3f} (chance {grounded['chance_purity']:.3f})"
        )
    use = result.get("code_use")
    if use:
        parts.append(
            f"next-frame error with read / random codes {use['next_frame_error_read_codes']:.5f} / {use['next_frame_error_random_codes']:.5f} (copy {use['next_frame_error_copy_last']:.5f}), code perplexity {use['code_perplexity']:.2f}"
        )
    control = result.get("controllability", {})
    if control.get("delta_psnr"):
        values = next(iter(control["delta_psnr"].values()))
        parts.append("delta-PSNR per t: " + ", ".join("n/a" if v is None else f"{v:.2f}" for v in values) + " dB")
    return "; ".join(parts) or "nothing measured"
