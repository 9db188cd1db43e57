"""Measure any world model through the WorldModel protocol alone.

Five measurements (see /work/shared/REFERENCE.md, "Measuring world models", and Genie):

- `horizon_errors`      compounding error: filter k real context steps, roll the prior open loop
                        with the real actions, and compare with reality at every step, in
                        observation space (MSE, PSNR, SSIM) where the model decodes and in latent
                        space always (against the posterior filtered from the real observations),
                        beside the filtering (posterior) reconstruction error.
- `calibration`         K stochastic rollouts per start; the fraction of real futures inside the
                        per-dimension central p% interval of the samples, per horizon.
- `error_bound`         one-step error eps and a Lipschitz constant L of the one-step map along
                        real trajectories; the bound eps (L^H - 1) / (L - 1) against horizon.
- `dream_against_reality` the return predicted in imagination along a policy's real actions
                        against the real return, per horizon, and where the two part.
- `controllability`     Genie's delta-PSNR: frames from the real actions against frames from
                        random actions (Eq. in Sec. 3, arXiv:2402.15391), and the same ratio in
                        latent space for every model with a continuous latent (decoder or not).

Every function takes the model and a `Batch` of real windows (numpy (B, T, ...), the time
convention of wmlab.core.types: step t holds the action that led to obs_t), runs under
torch.no_grad(), and returns plain JSON-ready values: lists indexed by step (step l is horizon
l + 1) and summaries at the requested horizons. Nothing here reads files or draws figures;
`wmlab.eval.suites` does that.

Shape legend: B sequences, T steps, k context steps, L open-loop steps (T - k), K samples per
start, F flattened features, H, W, C image.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wmlab.core.seeding import seeded
from wmlab.core.types import Batch, Trajectory

DEFAULT_HORIZONS = (1, 5, 10, 20, 50)
CALIBRATION_LEVELS = (0.5, 0.8, 0.95)
#: PSNR of a perfect prediction is infinite; capping the MSE at this fraction of the squared data
#: range caps PSNR at 100 dB so that averages and JSON stay finite.
PSNR_FLOOR = 1e-10


# ----------------------------------------------------------------------------------------------
# States: whatever the family filters, handled without knowing the family


def map_state(state: Any, function: Callable[[Any], Any]) -> Any:
    """Apply `function` to every array of a state: a tensor, a numpy array, or a dict of them."""
    if isinstance(state, dict):
        return {key: function(value) for key, value in state.items()}
    return function(state)


def state_time_slice(states: Any, start: int, stop: int | None = None) -> Any:
    """States over time (B, T, ...) -> (B, stop - start, ...)."""
    return map_state(states, lambda value: value[:, start:stop])


def state_at(states: Any, step: int) -> Any:
    """States over time (B, T, ...) -> the state at one step (B, ...)."""
    return map_state(states, lambda value: value[:, step])


def state_rows(state: Any, rows: Any) -> Any:
    """Select (or reorder, or repeat) batch rows of a state (B, ...) -> (len(rows), ...)."""

    def select(value):
        if isinstance(value, torch.Tensor):
            return value[torch.as_tensor(rows, device=value.device, dtype=torch.long)]
        return np.asarray(value)[np.asarray(rows)]

    return map_state(state, select)


def merge_time(states: Any) -> Any:
    """States (B, T, ...) -> (B * T, ...): every step becomes a start state of its own."""

    def merge(value):
        return value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])

    return map_state(states, merge)


def latent_vector(state: Any, leading: int = 1) -> torch.Tensor | None:
    """A state as one float vector per element of its `leading` dims: (*leading, F).

    A tensor state is flattened after its leading dims; a dict state is the concatenation of its
    flattened floating-point entries in sorted key order. Integer states (a tabular model's cells)
    have no meaningful distance, so they give None.
    """
    values = [state[key] for key in sorted(state)] if isinstance(state, dict) else [state]
    parts = []
    for value in values:
        value = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
        if not value.is_floating_point():
            continue
        parts.append(value.detach().float().cpu().reshape(*value.shape[:leading], -1))
    if not parts:
        return None
    return torch.cat(parts, -1)


def model_latent(model: Any, state: Any, leading: int = 1) -> torch.Tensor | None:
    """The model's own feature vector where it has one (`features(state)`: an RSSM's [h, z], the
    MDN-RNN's [z, h]); otherwise `latent_vector`. Features leave out the distribution statistics
    that some states carry beside the sample, which are not part of the state proper."""
    features = getattr(model, "features", None)
    if callable(features) and isinstance(state, dict):
        try:
            return features(state).detach().float().cpu().reshape(*_leading_shape(state, leading), -1)
        except (KeyError, TypeError):
            pass
    return latent_vector(state, leading)


def _leading_shape(state: Any, leading: int) -> tuple[int, ...]:
    first = next(iter(state.values())) if isinstance(state, dict) else state
    return tuple(first.shape[:leading])


@contextlib.contextmanager
def common_random_numbers(model: Any, seed: int) -> Iterator[None]:
    """Run a block with torch's global generator (and the model's own `generator`, where it has
    one) seeded to `seed`, restoring both afterwards. Two rollouts run this way draw the same
    noise, so their difference is caused by what differs between them (the actions, the start
    state), not by sampling."""
    generator = getattr(model, "generator", None)
    saved = generator.get_state() if isinstance(generator, torch.Generator) else None
    with seeded(seed):
        if saved is not None:
            generator.manual_seed(seed)
        try:
            yield
        finally:
            if saved is not None:
                generator.set_state(saved)


# ----------------------------------------------------------------------------------------------
# Observation-space errors


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def is_image(real: np.ndarray, leading: int = 2) -> bool:
    """uint8 (..., H, W, C) observations are images (wmlab's convention for frames)."""
    return real.dtype == np.uint8 and real.ndim == leading + 3


def as_unit_float(value: Any, image: bool) -> torch.Tensor:
    """Observations as float tensors; images in [0, 1] whether they come as uint8 or as floats
    (decoders return either)."""
    tensor = torch.as_tensor(to_numpy(value))
    if image and tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float()


def psnr(real: torch.Tensor, predicted: torch.Tensor, data_range: float = 1.0, leading: int = 1) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per element of the `leading` dims: (*leading, ...) -> (*leading).
    10 log10(range^2 / MSE), with the MSE floored at PSNR_FLOOR * range^2 (so at most 100 dB)."""
    error = (real.float() - predicted.float()).pow(2).reshape(*real.shape[:leading], -1).mean(-1)
    floor = PSNR_FLOOR * data_range**2
    return 10.0 * torch.log10(data_range**2 / error.clamp_min(floor))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised 2-D Gaussian window (size, size), SSIM's weighting (Wang et al. 2004, Sec. III-C)."""
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(coordinates**2) / (2 * sigma**2))
    profile = profile / profile.sum()
    return torch.outer(profile, profile).float()


def ssim(
    real: torch.Tensor,
    predicted: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image: (N, H, W, C) pairs -> (N,).

    Wang, Bovik, Sheikh & Simoncelli (2004), Eq. 13, with local statistics under an 11 x 11
    Gaussian window of sigma 1.5, computed per channel over the 'valid' positions (no padding, so
    borders are not invented) and averaged. Images smaller than the window use the largest odd
    window that fits.
    """
    if real.shape != predicted.shape or real.ndim != 4:
        raise ValueError(
            f"ssim takes two (N, H, W, C) batches of the same shape, got {tuple(real.shape)} and {tuple(predicted.shape)}"
        )
    channels = real.shape[-1]
    size = min(window_size, real.shape[1], real.shape[2])
    size -= 1 - size % 2  # odd, so the window has a centre
    # Double precision: the local variances are differences of nearly equal moments, and in
    # float32 their rounding is the size of C2 on flat regions.
    window = gaussian_window(size, sigma).double().to(real.device).expand(channels, 1, size, size)
    x = real.double().permute(0, 3, 1, 2)
    y = predicted.double().permute(0, 3, 1, 2)

    def local_mean(image):
        return F.conv2d(image, window, groups=channels)

    mean_x, mean_y = local_mean(x), local_mean(y)
    variance_x = local_mean(x * x) - mean_x**2
    variance_y = local_mean(y * y) - mean_y**2
    covariance = local_mean(x * y) - mean_x * mean_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (variance_x + variance_y + c2)
    return (numerator / denominator).mean(dim=(1, 2, 3)).to(real.dtype if real.is_floating_point() else torch.float32)


def observation_errors(real: Any, predicted: Any) -> dict[str, np.ndarray]:
    """Per-step errors of one observation key, real and predicted (B, L, ...) -> {name: (L,)},
    averaged over the batch.

    Images (uint8 (B, L, H, W, C)): mse in [0, 1] units, psnr (data range 1), ssim. Float vectors:
    mse, and psnr with the data range of the real values (max - min over the batch). Integer
    observations (a cell index): accuracy, the fraction predicted exactly.
    """
    real_array = to_numpy(real)
    B, L = real_array.shape[:2]
    if real_array.dtype.kind in "iub" and not is_image(real_array):
        hits = (np.asarray(to_numpy(predicted)).reshape(B, L, -1) == real_array.reshape(B, L, -1)).all(-1)
        return {"accuracy": hits.mean(0).astype(np.float64)}
    image = is_image(real_array)
    truth, guess = as_unit_float(real_array, image), as_unit_float(predicted, image)
    if truth.shape != guess.shape:
        raise ValueError(f"predicted observations {tuple(guess.shape)} do not match the real ones {tuple(truth.shape)}")
    data_range = 1.0 if image else max(float(truth.max() - truth.min()), 1e-8)
    errors = {
        "mse": (truth - guess).pow(2).reshape(B, L, -1).mean(-1).mean(0),
        "psnr": psnr(truth, guess, data_range, leading=2).mean(0),
    }
    if image:
        flat = lambda tensor: tensor.reshape(B * L, *tensor.shape[2:])  # noqa: E731
        errors["ssim"] = ssim(flat(truth), flat(guess)).reshape(B, L).mean(0)
    return {name: value.double().numpy() for name, value in errors.items()}


def moving_pixel_errors(real: Any, predicted: Any, reference: Any) -> dict[str, np.ndarray]:
    """Squared error over the pixels that move, per step: real and predicted (B, L, H, W, C),
    reference (B, H, W, C) the last real frame the model saw -> {"moving_mse": (L,),
    "moving_mse_repeat_last": (L,), "moving_fraction": (L,)}.

    A pixel moves at step l when the real frame there differs from the reference in any channel.
    On a task whose static background fills most of the frame (two-rooms: walls, floor, goal), the
    whole-frame error is small for any model that draws the background; over the moving pixels it
    is not. Errors are pooled over the batch (squared error summed over the moving pixels of every
    sequence, over their count), in [0, 1] units; a step where nothing moves is NaN. The baseline
    `moving_mse_repeat_last` predicts the reference frame at every step (a model that draws only
    the background, without the agent, scores about half of it when the agent is a disc that moved
    clear of where it was)."""
    truth = as_unit_float(real, True)  # (B, L, H, W, C)
    guess = as_unit_float(predicted, True)
    last = as_unit_float(reference, True)[:, None]  # (B, 1, H, W, C)
    if truth.shape != guess.shape or last.shape[2:] != truth.shape[2:]:
        raise ValueError(
            f"moving-pixel error: real {tuple(truth.shape)}, predicted {tuple(guess.shape)} and reference {tuple(last.shape)} do not match"
        )
    moving = (truth != last).any(-1)  # (B, L, H, W)
    count = moving.sum((0, 2, 3)).double() * truth.shape[-1]  # moving values per step (L,)

    def pooled(prediction: torch.Tensor) -> torch.Tensor:
        squared = (truth - prediction).pow(2).sum(-1) * moving  # (B, L, H, W)
        return squared.sum((0, 2, 3)).double() / count  # NaN where nothing moves

    return {
        "moving_mse": pooled(guess).numpy(),
        "moving_mse_repeat_last": pooled(last.expand_as(truth)).numpy(),
        "moving_fraction": (moving.double().mean((0, 2, 3))).numpy(),
    }


# ----------------------------------------------------------------------------------------------
# Rolling a model along real data


def _window_record(model: Any, context: int, steps: int, sequences: int) -> dict[str, Any]:
    """What every windowed measurement's result starts with: the model's class, the context
    frames, the measured steps L after them and the B sequences."""
    return {"model": type(model).__name__, "context": context, "steps": steps, "sequences": sequences}


def window_parts(batch: Batch, context: int) -> tuple[int, int, int]:
    """(B, T, L) of a batch split into k context steps and L = T - k open-loop steps."""
    B, T = (int(size) for size in np.shape(batch.reward)[:2])
    if not 0 < context < T:
        raise ValueError(f"the world-model metrics need 0 < context < T, got context {context} and T {T}")
    return B, T, T - context


def slice_observations(batch: Batch, start: int, stop: int | None = None) -> dict[str, Any]:
    return {key: value[:, start:stop] for key, value in batch.obs.items()}


def filter_sequence(model: Any, batch: Batch, stop: int | None = None) -> tuple[Any, Any]:
    """Filter steps [0, stop) of the batch from the model's initial state: (posteriors (B, t, ...), last (B, ...))."""
    B = np.shape(batch.reward)[0]
    return model.observe(
        slice_observations(batch, 0, stop), batch.action[:, :stop], batch.is_first[:, :stop], model.initial(B)
    )


def imagine_steps(model: Any, state: Any, actions: Any, steps: int) -> Trajectory:
    """imagine with actions (B, L, ...) as the protocol takes them (positional horizon: some
    families require it)."""
    return model.imagine(state, actions, steps)


def decode_states(model: Any, states: Any) -> dict[str, Any] | None:
    """Decoded observations for states (B, L, ...), or None for families that cannot decode."""
    if not getattr(model, "can_decode", False):
        return None
    return model.decode(states)


def horizons_within(horizons: Sequence[int], steps: int) -> list[int]:
    """The requested horizons clipped to the available number of open-loop steps (deduplicated)."""
    clipped = sorted({min(int(horizon), steps) for horizon in horizons if horizon >= 1})
    return clipped


def at_horizons(per_step: dict[str, list[float]], horizons: Sequence[int]) -> dict[str, dict[str, float]]:
    """{metric: {"h": value at horizon h}}; horizon h is step h - 1."""
    return {name: {str(h): values[h - 1] for h in horizons} for name, values in per_step.items()}


def _clean(values: Any) -> list[float | None]:
    """A list of floats for JSON (NaN becomes None)."""
    return [
        None if not math.isfinite(float(value)) else float(value)
        for value in np.asarray(values, dtype=np.float64).reshape(-1)
    ]


# ----------------------------------------------------------------------------------------------
# 1. Compounding error against horizon


@torch.no_grad()
def horizon_errors(
    model: Any, batch: Batch, context: int = 5, horizons: Sequence[int] = DEFAULT_HORIZONS, seed: int = 0
) -> dict[str, Any]:
    """Open-loop error against horizon, beside the filtering error.

    The model filters the k context steps, then imagines the remaining L steps with the real
    actions; step l of the rollout predicts real step k + l (horizon l + 1). "open_loop" holds,
    per step, for each observation key the model decodes `<key>/mse`, `<key>/psnr`,
    `<key>/ssim` (images) or `<key>/accuracy` (integer observations), and in latent space
    `latent/distance` (mean Euclidean distance between the open-loop latent and the posterior
    latent that filtering the real observations reaches at the same step) and
    `latent/relative` (that distance over the posterior latent's norm) and
    `latent/normalised_mse` (squared distance over the posterior latents' variance across the
    batch at that step; 1 for predicting their mean). "filtering" holds the
    same observation metrics for the posterior's reconstruction of the same steps.

    For image keys, `<key>/moving_mse` is the open-loop error over the pixels that move in the
    real clip (those that differ from the last context frame; `moving_pixel_errors`), and
    "repeat_last_frame" holds the baseline that predicts the last context frame at every step
    (`<key>/moving_mse`, `<key>/mse`); "moving_fraction" gives, per image key, the share of
    pixels that move at each step.
    """
    B, T, L = window_parts(batch, context)
    with common_random_numbers(model, seed):
        posteriors, _ = filter_sequence(model, batch)
        _, last = filter_sequence(model, batch, context)
        trajectory = imagine_steps(model, last, batch.action[:, context:], L)
    future_posteriors = state_time_slice(posteriors, context)
    open_loop: dict[str, list] = {}
    filtering: dict[str, list] = {}
    baseline: dict[str, list] = {}  # "repeat the last real frame", for the image keys
    moving_fraction: dict[str, list] = {}
    notes: list[str] = []

    imagined = decode_states(model, trajectory.states)
    if imagined is None:
        notes.append(f"{type(model).__name__} cannot decode: observation-space errors are left out, latent errors only")
    else:
        reconstructed = model.decode(future_posteriors)
        for key in sorted(set(imagined) & set(batch.obs)):
            real = np.asarray(batch.obs[key])[:, context:]
            for name, values in observation_errors(real, imagined[key]).items():
                open_loop[f"{key}/{name}"] = _clean(values)
            for name, values in observation_errors(real, reconstructed[key]).items():
                filtering[f"{key}/{name}"] = _clean(values)
            if is_image(real):
                moving = moving_pixel_errors(real, imagined[key], np.asarray(batch.obs[key])[:, context - 1])
                open_loop[f"{key}/moving_mse"] = _clean(moving["moving_mse"])
                baseline[f"{key}/moving_mse"] = _clean(moving["moving_mse_repeat_last"])
                baseline[f"{key}/mse"] = _clean(
                    observation_errors(real, np.repeat(np.asarray(batch.obs[key])[:, context - 1 : context], L, 1))[
                        "mse"
                    ]
                )
                moving_fraction[key] = _clean(moving["moving_fraction"])

    predicted_latent = model_latent(model, trajectory.states, leading=2)
    posterior_latent = model_latent(model, future_posteriors, leading=2)
    if predicted_latent is None or posterior_latent is None or predicted_latent.shape != posterior_latent.shape:
        notes.append(f"{type(model).__name__}'s state has no continuous latent vector: latent errors are left out")
    else:
        distance = (predicted_latent - posterior_latent).norm(dim=-1)  # (B, L)
        scale = posterior_latent.norm(dim=-1).clamp_min(1e-8)
        open_loop["latent/distance"] = _clean(distance.mean(0))
        open_loop["latent/relative"] = _clean((distance / scale).mean(0))
        # Squared error over the posterior latents' total variance at that step across the
        # batch: scale-free, so models with different latent spaces compare; predicting the
        # batch mean scores 1.
        if B > 1:
            spread = (posterior_latent - posterior_latent.mean(0, keepdim=True)).pow(2).sum(-1).mean(0).clamp_min(1e-12)
            open_loop["latent/normalised_mse"] = _clean(distance.pow(2).mean(0) / spread)

    chosen = horizons_within(horizons, L)
    return {
        **_window_record(model, context, L, B),
        "horizons": chosen,
        "open_loop": open_loop,
        "filtering": filtering,
        "repeat_last_frame": baseline,
        "moving_fraction": moving_fraction,
        "at_horizon": {
            "open_loop": at_horizons(open_loop, chosen),
            "filtering": at_horizons(filtering, chosen),
            "repeat_last_frame": at_horizons(baseline, chosen),
        },
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------
# 2. Calibration


def repeat_rows(state: Any, times: int) -> Any:
    """Each batch row repeated `times` times in a row: (B, ...) -> (B * times, ...)."""
    rows = np.repeat(np.arange(_leading_shape(state, 1)[0]), times)
    return state_rows(state, rows)


def _flat_features(values: Any, B: int, K: int, L: int, image: bool) -> torch.Tensor:
    """Predictions (B * K, L, ...) -> (B, K, L, F) floats."""
    return as_unit_float(values, image).reshape(B, K, L, -1)


@torch.no_grad()
def calibration(
    model: Any,
    batch: Batch,
    context: int = 5,
    samples: int = 32,
    levels: Sequence[float] = CALIBRATION_LEVELS,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    seed: int = 0,
    max_features: int = 2048,
    tolerance: float = 0.1,
) -> dict[str, Any]:
    """Coverage of the model's predictive intervals, per horizon.

    From each filtered start the model imagines K rollouts with the real actions. For each level
    p the per-dimension central interval of the K samples, between their (1 - p) / 2 and
    (1 + p) / 2 quantiles, should hold the real future a fraction p of the time; `coverage`
    [level][step] is the observed fraction, `calibration_error` its distance |observed - p|.
    The space is the decoded observations where the model decodes (every float or image key), else
    the latent space with the posterior latent as the real future. At most `max_features`
    dimensions per key enter (a fixed random subset; coverage is an average over dimensions, so
    a subset estimates it without bias).

    A model whose K rollouts are identical (or that says `deterministic = True`) has no predictive
    distribution: the result says `calibratable: False` with the reason, and no numbers.
    `overconfident` / `underconfident` flag a mean signed gap beyond `tolerance`.
    """
    B, T, L = window_parts(batch, context)
    base = {
        "model": type(model).__name__,
        "context": context,
        "steps": L,
        "samples": samples,
        "levels": [float(p) for p in levels],
    }
    if getattr(model, "deterministic", False) is True:
        return {
            **base,
            "calibratable": False,
            "reason": f"{type(model).__name__} declares itself deterministic: it has no predictive distribution to calibrate",
        }
    if samples < 2:
        raise ValueError(f"calibration needs at least 2 samples per start, got {samples}")
    with common_random_numbers(model, seed):
        _, last = filter_sequence(model, batch, context)
        posteriors, _ = filter_sequence(model, batch) if not getattr(model, "can_decode", False) else (None, None)
        actions = np.repeat(np.asarray(batch.action)[:, context:], samples, axis=0)
        trajectory = imagine_steps(model, repeat_rows(last, samples), actions, L)

    predictions: dict[str, torch.Tensor] = {}
    truths: dict[str, torch.Tensor] = {}
    decoded = decode_states(model, trajectory.states)
    if decoded is not None:
        space = "observation"
        for key in sorted(set(decoded) & set(batch.obs)):
            real = np.asarray(batch.obs[key])[:, context:]
            if real.dtype.kind in "iub" and not is_image(real):
                continue  # a cell index has no interval
            image = is_image(real)
            predictions[key] = _flat_features(decoded[key], B, samples, L, image)
            truths[key] = as_unit_float(real, image).reshape(B, L, -1)
    else:
        space = "latent"
        predicted = model_latent(model, trajectory.states, leading=2)
        truth = model_latent(model, state_time_slice(posteriors, context), leading=2)
        if predicted is not None and truth is not None:
            predictions["latent"] = predicted.reshape(B, samples, L, -1)
            truths["latent"] = truth
    if not predictions:
        return {
            **base,
            "calibratable": False,
            "reason": "the model predicts nothing continuous to put an interval around",
        }

    spread = max(float((values - values[:, :1]).abs().max()) for values in predictions.values())
    if spread == 0.0:
        return {
            **base,
            "space": space,
            "calibratable": False,
            "reason": f"the {samples} rollouts from each start are identical: the model is deterministic and has no predictive distribution to calibrate",
        }

    generator = torch.Generator().manual_seed(seed)
    coverage_sum = torch.zeros(len(levels), L, dtype=torch.float64)
    for key, values in predictions.items():
        features = values.shape[-1]
        chosen = (
            torch.randperm(features, generator=generator)[:max_features] if features > max_features else slice(None)
        )
        values, truth = values[..., chosen], truths[key][..., chosen]
        for index, level in enumerate(levels):
            bounds = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype)
            low, high = torch.quantile(values, bounds, dim=1)  # each (B, L, F)
            inside = (truth >= low) & (truth <= high)
            coverage_sum[index] += inside.double().mean(dim=(0, 2))
    coverage = coverage_sum / len(predictions)  # (levels, L)
    nominal = torch.tensor(list(levels), dtype=torch.float64)[:, None]
    error = (coverage - nominal).abs()
    signed = float((coverage - nominal).mean())
    chosen_horizons = horizons_within(horizons, L)
    return {
        **base,
        "space": space,
        "keys": sorted(predictions),
        "calibratable": True,
        "horizons": chosen_horizons,
        "coverage": {str(level): _clean(coverage[index]) for index, level in enumerate(levels)},
        "calibration_error": {str(level): _clean(error[index]) for index, level in enumerate(levels)},
        "mean_calibration_error": float(error.mean()),
        "mean_signed_gap": signed,
        "overconfident": signed < -tolerance,
        "underconfident": signed > tolerance,
        "coverage_at_horizon": {
            str(level): {str(h): float(coverage[index, h - 1]) for h in chosen_horizons}
            for index, level in enumerate(levels)
        },
    }


# ----------------------------------------------------------------------------------------------
# 3. Error bound


def compounding_bound(one_step_error: float, lipschitz: float, horizon: int) -> float:
    """eps (L^H - 1) / (L - 1): the error after H steps of an L-Lipschitz model whose every step
    adds at most eps (a geometric sum of propagated one-step errors); eps H when L = 1."""
    if abs(lipschitz - 1.0) < 1e-9:
        return one_step_error * horizon
    return one_step_error * (lipschitz**horizon - 1.0) / (lipschitz - 1.0)


@torch.no_grad()
def error_bound(
    model: Any,
    batch: Batch,
    horizons: Sequence[int] | int = 50,
    seed: int = 0,
    max_states: int = 512,
    measured: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """One-step error eps and Lipschitz constant L of the model's one-step map in latent space,
    estimated along real trajectories, and the compounding bound they imply.

    Filtering the batch gives posterior states s_t. eps is the mean distance between the one-step
    prediction f(s_t, a_{t+1}) and the posterior s_{t+1}. For L, each state s_i is paired with its
    nearest other real state s_j (in latent distance) and both are stepped with the same action
    a_i under common random numbers: L is the largest ratio |f(s_j, a_i) - f(s_i, a_i)| /
    |s_j - s_i| (a lower estimate of the true constant, from the data's own neighbourhoods); the
    median and 95th percentile are reported too. `bound` [H - 1] = eps (L^H - 1) / (L - 1) for
    H = 1 .. horizons (an int, or the largest of a sequence); `measured`, when given (the open-loop
    latent distance per step from `horizon_errors`), is stored beside it.
    """
    B, T = (int(size) for size in np.shape(batch.reward)[:2])
    if T < 2:
        raise ValueError(f"the error bound needs windows of T >= 2 steps, got T={T}")
    with common_random_numbers(model, seed):
        posteriors, _ = filter_sequence(model, batch)
    current, following = merge_time(state_time_slice(posteriors, 0, T - 1)), merge_time(state_time_slice(posteriors, 1))
    actions = np.asarray(batch.action)[:, 1:]
    actions = actions.reshape(B * (T - 1), 1, *actions.shape[2:])
    # Steps that start a new episode do not follow from the step before.
    valid = np.flatnonzero(~np.asarray(batch.is_first)[:, 1:].reshape(-1).astype(bool))
    if valid.size > max_states:
        valid = np.sort(np.random.default_rng(seed).choice(valid, max_states, replace=False))
    current, following, actions = state_rows(current, valid), state_rows(following, valid), actions[valid]
    base = {"model": type(model).__name__, "states": int(valid.size)}
    start = model_latent(model, current)
    target = model_latent(model, following)
    if start is None or target is None or valid.size < 2:
        return {
            **base,
            "defined": False,
            "reason": "the model's state has no continuous latent vector (or too few states)",
        }

    def step(state):
        with common_random_numbers(model, seed + 1):
            return model_latent(model, state_at(imagine_steps(model, state, actions, 1).states, 0))

    predicted = step(current)
    one_step = (predicted - target).norm(dim=-1)
    distances = torch.cdist(start.double(), start.double())
    distances.fill_diagonal_(float("inf"))
    distances[distances == 0] = float("inf")  # a repeated state gives no ratio
    nearest_distance, nearest = distances.min(dim=1)
    usable = torch.isfinite(nearest_distance)
    if not bool(usable.any()):
        return {**base, "defined": False, "reason": "every real state is identical: no finite differences"}
    neighbours = step(state_rows(current, nearest.numpy()))
    ratios = ((neighbours - predicted).norm(dim=-1).double() / nearest_distance)[usable]
    eps, lipschitz = float(one_step.mean()), float(ratios.max())
    longest = int(horizons) if isinstance(horizons, int) else max(int(h) for h in horizons)
    return {
        **base,
        "defined": True,
        "one_step_error": eps,
        "one_step_error_std": float(one_step.std()) if one_step.numel() > 1 else 0.0,
        "lipschitz": lipschitz,
        "lipschitz_median": float(ratios.median()),
        "lipschitz_p95": float(torch.quantile(ratios, 0.95)),
        "bound": [compounding_bound(eps, lipschitz, h) for h in range(1, longest + 1)],
        "measured": None if measured is None else list(measured),
    }


# ----------------------------------------------------------------------------------------------
# 4. Dream against reality


@torch.no_grad()
def dream_against_reality(
    model: Any, batch: Batch, context: int = 5, threshold: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """Returns predicted in imagination along a policy's real actions against the real returns.

    The batch holds windows of episodes collected with the policy. After filtering the context,
    the model imagines the policy's own actions; the predicted return to horizon H is the sum of
    the first H predicted rewards, each weighted by the predicted probability of still being in
    the episode (the product of the continues before it), and the real return the sum of the
    real rewards. The relative gap at H is the mean absolute difference over starts divided by
    the mean absolute real return, floored at H times the batch's mean absolute reward per step
    (1 when the batch holds no reward), so that a stretch of zero rewards does not divide by
    zero; `parting_horizon` is the first H whose gap
    exceeds `threshold` (None: they never part within the window).
    """
    B, T, L = window_parts(batch, context)
    with common_random_numbers(model, seed):
        _, last = filter_sequence(model, batch, context)
        trajectory = imagine_steps(model, last, batch.action[:, context:], L)
    rewards = torch.as_tensor(to_numpy(trajectory.rewards)).double().reshape(B, L)
    continues = torch.as_tensor(to_numpy(trajectory.continues)).double().reshape(B, L)
    alive = torch.cat([torch.ones(B, 1, dtype=torch.float64), continues[:, :-1].cumprod(1)], 1)
    predicted = (rewards * alive).cumsum(1)  # (B, L): return to horizon l + 1
    real_rewards = torch.as_tensor(np.asarray(batch.reward, dtype=np.float64)[:, context:])
    real = real_rewards.cumsum(1)
    # Mean absolute reward per step over the whole batch; a batch without any reward (a sparse
    # task before the goal) measures gaps in reward units instead of dividing by zero.
    reward_scale = float(np.abs(np.asarray(batch.reward, dtype=np.float64)).mean()) or 1.0
    steps = torch.arange(1, L + 1, dtype=torch.float64)
    scale = torch.maximum(real.abs().mean(0), reward_scale * steps).clamp_min(1e-8)
    gap = (predicted - real).abs().mean(0) / scale
    parting = next((h + 1 for h in range(L) if float(gap[h]) > threshold), None)
    return {
        **_window_record(model, context, L, B),
        "threshold": threshold,
        "predicted_return": _clean(predicted.mean(0)),
        "real_return": _clean(real.mean(0)),
        "relative_gap": _clean(gap),
        "parting_horizon": parting,
    }


# ----------------------------------------------------------------------------------------------
# 5. Controllability


def shuffled_actions(actions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random actions (B, L, ...) drawn uniformly from the batch's own actions: the action
    distribution stays the data's, the link between an action and its step is broken."""
    flat = actions.reshape(-1, *actions.shape[2:])
    return flat[rng.integers(0, flat.shape[0], size=actions.shape[0] * actions.shape[1])].reshape(actions.shape)


def latent_delta_db(target: torch.Tensor, with_real: torch.Tensor, with_random: torch.Tensor) -> torch.Tensor:
    """Delta-PSNR in latent space, per step (L,): 10 log10(MSE(z, zhat') / MSE(z, zhat)), the
    mean squared errors over latent features of the latent rolled with random actions (zhat') and
    with the real ones (zhat) against the posterior latent z filtered from the real observations,
    per sequence, then averaged over sequences. It is the frame delta-PSNR with the latent in
    place of the frame (the data range cancels in the difference of two PSNRs), so it is in the
    same unit, does not depend on the latent's scale, and is exactly 0 for a model that ignores
    its actions. Inputs (B, L, F)."""
    real_error = (with_real - target).pow(2).mean(-1).double().clamp_min(PSNR_FLOOR)
    random_error = (with_random - target).pow(2).mean(-1).double().clamp_min(PSNR_FLOOR)
    return (10.0 * torch.log10(random_error / real_error)).mean(0)


@torch.no_grad()
def controllability(
    model: Any,
    batch: Batch,
    context: int = 5,
    random_actions: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Genie's delta-PSNR (arXiv:2402.15391, Sec. 3): delta_PSNR_t = PSNR(x_t, xhat_t) -
    PSNR(x_t, xhat'_t), where xhat_t is generated with the real actions and xhat'_t with random
    ones, from the same filtered context and the same sampling noise (common random numbers, so
    the difference is the actions' doing). Larger means the actions steer the model more; a
    model that ignores its actions scores exactly 0.

    `random_actions(real (B, L, ...), rng)` draws the random actions (default: `shuffled_actions`).
    Per observation key the model decodes: `delta_psnr[key]` per step, its mean, and the two PSNRs.
    Every model with a continuous latent, decoder or not (JEPA, TD-MPC2), also gets
    `latent_delta_db` per step and its mean `mean_latent_delta_db` (`latent_delta_db`: the
    reference is the posterior latent, the model's own encoding of the real future, not the
    frame). "defined" is False only when neither can be measured, with the reason.
    """
    B, T, L = window_parts(batch, context)
    base = _window_record(model, context, L, B)
    real_actions = np.asarray(batch.action)[:, context:]
    draw = random_actions or shuffled_actions
    other_actions = draw(real_actions, np.random.default_rng(seed))
    with common_random_numbers(model, seed):
        posteriors, _ = filter_sequence(model, batch)
        _, last = filter_sequence(model, batch, context)
    with common_random_numbers(model, seed + 1):
        states_real = imagine_steps(model, last, real_actions, L).states
    with common_random_numbers(model, seed + 1):
        states_random = imagine_steps(model, last, other_actions, L).states
    result: dict[str, Any] = {
        **base,
        "defined": False,
        "delta_psnr": {},
        "mean_delta_psnr": {},
        "psnr_real_actions": {},
        "psnr_random_actions": {},
    }
    reasons = []

    target = model_latent(model, state_time_slice(posteriors, context), leading=2)
    latent_real = model_latent(model, states_real, leading=2)
    latent_random = model_latent(model, states_random, leading=2)
    if target is None or latent_real is None or latent_random is None or latent_real.shape != target.shape:
        reasons.append(f"{type(model).__name__}'s state has no continuous latent vector")
    else:
        delta = latent_delta_db(target, latent_real, latent_random)
        result["latent_delta_db"] = _clean(delta)
        result["mean_latent_delta_db"] = float(delta.mean())

    if not getattr(model, "can_decode", False):
        reasons.append(f"{type(model).__name__} cannot decode, and delta-PSNR compares generated frames")
    else:
        with_real, with_random = model.decode(states_real), model.decode(states_random)
        for key in sorted(set(with_real) & set(batch.obs)):
            real = np.asarray(batch.obs[key])[:, context:]
            if real.dtype.kind in "iub" and not is_image(real):
                continue
            image = is_image(real)
            truth = as_unit_float(real, image)
            data_range = 1.0 if image else max(float(truth.max() - truth.min()), 1e-8)
            first = psnr(truth, as_unit_float(with_real[key], image), data_range, leading=2).double()
            second = psnr(truth, as_unit_float(with_random[key], image), data_range, leading=2).double()
            delta = (first - second).mean(0)
            result["delta_psnr"][key] = _clean(delta)
            result["mean_delta_psnr"][key] = float(delta.mean())
            result["psnr_real_actions"][key] = _clean(first.mean(0))
            result["psnr_random_actions"][key] = _clean(second.mean(0))
        if not result["delta_psnr"]:
            reasons.append("the model decodes only integer observations (cell indices), which have no PSNR")
    result["defined"] = bool(result["delta_psnr"]) or "latent_delta_db" in result
    if reasons:
        result["notes" if result["defined"] else "reason"] = "; ".join(reasons)
    return result
