"""The world-model measurements on synthetic models whose answers are known, and the horizon
suite end to end on every registered model family at a tiny size."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.core.registry import MODELS
from wmlab.core.types import Batch
from wmlab.eval import world_model_metrics as metrics
from wmlab.eval.suites import SuiteSettings, episode_windows, evaluate_suite, plot_suite, write_suite
from wmlab.eval.synthetic import LinearGaussianModel, rotation, sample_batch

ACTIONS = np.array([[1.0, 0.0], [0.5, -1.0]])


def linear(noise_std: float = 0.0, matrix=None, action_matrix=ACTIONS, **kwargs) -> LinearGaussianModel:
    return LinearGaussianModel(
        rotation(0.3, 0.95) if matrix is None else matrix, action_matrix, noise_std, action_size=2, **kwargs
    )


# --- SSIM and PSNR against hand cases -------------------------------------------------------


def test_ssim_of_constant_images_matches_the_closed_form():
    # Constant images have zero local variance, so Eq. 13 reduces to (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.7
    real = torch.full((1, 16, 16, 3), a)
    predicted = torch.full((1, 16, 16, 3), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(real, predicted).item() == pytest.approx(expected, rel=1e-4)


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((2, 20, 20, 1), generator=generator)
    assert torch.allclose(metrics.ssim(image, image), torch.ones(2), atol=1e-5)
    noisy = (image + 0.2 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    assert (metrics.ssim(image, noisy) < 0.9).all()
    window = metrics.gaussian_window()
    assert window.shape == (11, 11) and window.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_psnr_matches_its_definition_and_is_capped():
    real = torch.zeros(1, 4)
    predicted = torch.full((1, 4), 0.1)  # MSE 0.01 -> 20 dB at range 1
    assert metrics.psnr(real, predicted).item() == pytest.approx(20.0, abs=1e-4)
    assert metrics.psnr(real, real).item() == pytest.approx(100.0)


# --- 1. horizon -----------------------------------------------------------------------------


def test_a_perfect_model_has_zero_open_loop_error():
    model = linear()
    result = metrics.horizon_errors(model, sample_batch(model, 4, 30), context=5)
    assert result["horizons"] == [1, 5, 10, 20, 25]  # 50 clipped to the 25 open-loop steps
    assert max(result["open_loop"]["vector/mse"]) < 1e-12
    assert max(result["open_loop"]["latent/distance"]) < 1e-5
    assert max(result["filtering"]["vector/mse"]) < 1e-12


def test_open_loop_error_grows_with_horizon_for_a_wrong_model():
    truth = linear()
    wrong = linear(matrix=rotation(0.35, 0.95))
    result = metrics.horizon_errors(wrong, sample_batch(truth, 8, 25), context=5)
    errors = result["open_loop"]["vector/mse"]
    assert errors[0] > 0 and errors[9] > errors[0]
    assert result["at_horizon"]["open_loop"]["vector/mse"]["10"] == errors[9]


def test_normalised_latent_error_is_zero_for_a_perfect_model_and_hand_checked_for_a_constant_one():
    truth = linear()
    batch = sample_batch(truth, 8, 12)
    assert max(metrics.horizon_errors(truth, batch, context=4)["open_loop"]["latent/normalised_mse"]) < 1e-9
    # A model whose every prediction is the zero vector: squared norm over the batch variance.
    frozen = linear(matrix=np.zeros((2, 2)), action_matrix=np.zeros((2, 2)))
    result = metrics.horizon_errors(frozen, batch, context=4)["open_loop"]["latent/normalised_mse"]
    real = torch.as_tensor(np.asarray(batch.obs["vector"])[:, 4:], dtype=torch.float64)  # (B, L, 2)
    expected = real.pow(2).sum(-1).mean(0) / (real - real.mean(0)).pow(2).sum(-1).mean(0)
    assert result == pytest.approx(expected.tolist(), rel=1e-6)
    assert min(result) >= 1.0  # no constant beats the batch mean, which scores exactly 1


def test_latent_vector_flattens_tensors_and_dicts():
    state = {"b": torch.ones(2, 3, 4), "a": torch.zeros(2, 3, 2, 2), "cell": torch.ones(2, 3, dtype=torch.long)}
    vector = metrics.latent_vector(state, leading=2)
    assert vector.shape == (2, 3, 8)  # sorted keys, integer entries left out
    assert torch.equal(vector[..., :4], torch.zeros(2, 3, 4))
    assert metrics.latent_vector(np.arange(4)) is None  # a tabular cell has no latent distance


# --- 2. calibration -------------------------------------------------------------------------


def test_a_gaussian_model_is_calibrated_on_its_own_samples():
    model = LinearGaussianModel(np.eye(2), ACTIONS, noise_std=0.5, action_size=2)
    result = metrics.calibration(model, sample_batch(model, 256, 10, seed=1), context=5, samples=64)
    assert result["calibratable"]
    assert result["mean_calibration_error"] < 0.05
    assert not result["overconfident"]
    for level in ("0.5", "0.8", "0.95"):
        assert all(abs(value - float(level)) < 0.12 for value in result["coverage"][level])


def test_an_overconfident_model_is_flagged():
    truth = LinearGaussianModel(np.eye(2), ACTIONS, noise_std=0.5, action_size=2)
    narrow = LinearGaussianModel(np.eye(2), ACTIONS, noise_std=0.1, action_size=2)
    result = metrics.calibration(narrow, sample_batch(truth, 64, 10, seed=1), context=5, samples=64)
    assert result["overconfident"] and result["mean_calibration_error"] > 0.3


def test_a_deterministic_model_is_reported_as_not_calibratable():
    model = linear()
    batch = sample_batch(model, 4, 10)
    detected = metrics.calibration(model, batch, samples=8)
    assert detected["calibratable"] is False and "identical" in detected["reason"]
    declared = metrics.calibration(linear(declare_deterministic=True), batch)
    assert declared["calibratable"] is False and "deterministic" in declared["reason"]
    assert "coverage" not in detected and "coverage" not in declared


# --- 3. error bound -------------------------------------------------------------------------


def test_the_lipschitz_estimate_of_a_linear_model_is_its_norm():
    # A scaled rotation stretches every difference by exactly its scale, so L = ||A|| = 1.2.
    model = linear(matrix=rotation(0.4, 1.2))
    result = metrics.error_bound(model, sample_batch(model, 6, 12), horizons=10)
    assert result["lipschitz"] == pytest.approx(1.2, rel=1e-4)
    assert result["one_step_error"] < 1e-5  # it is the data's own model
    # A general matrix: the estimate never exceeds the spectral norm and gets close to it.
    matrix = np.array([[1.1, 0.3], [0.0, 0.5]])
    general = linear(matrix=matrix)
    estimate = metrics.error_bound(general, sample_batch(general, 16, 16), horizons=5)["lipschitz"]
    norm = np.linalg.norm(matrix, 2)
    assert 0.9 * norm < estimate <= norm * (1 + 1e-5)


def test_the_bound_is_the_geometric_sum():
    assert metrics.compounding_bound(0.1, 2.0, 3) == pytest.approx(0.1 * 7)
    assert metrics.compounding_bound(0.1, 1.0, 4) == pytest.approx(0.4)
    truth, wrong = linear(), linear(matrix=rotation(0.35, 0.95))
    result = metrics.error_bound(wrong, sample_batch(truth, 8, 20), horizons=15)
    assert result["bound"][0] == pytest.approx(result["one_step_error"])
    assert len(result["bound"]) == 15 and all(np.diff(result["bound"]) > 0)


# --- 4. dream against reality ---------------------------------------------------------------


def test_dream_and_reality_agree_for_a_perfect_model_and_part_for_a_wrong_one():
    truth = linear()
    batch = sample_batch(truth, 8, 30)
    perfect = metrics.dream_against_reality(truth, batch, context=5)
    assert perfect["parting_horizon"] is None
    assert np.allclose(perfect["predicted_return"], perfect["real_return"], atol=1e-6)
    wrong = metrics.dream_against_reality(linear(matrix=rotation(0.3, 0.6)), batch, context=5, threshold=0.2)
    assert wrong["parting_horizon"] is not None and wrong["parting_horizon"] >= 1


# --- 5. controllability --------------------------------------------------------------------


def test_a_model_that_ignores_its_actions_has_zero_controllability():
    blind = linear(action_matrix=None)
    result = metrics.controllability(blind, sample_batch(blind, 8, 15), context=5)
    assert result["mean_delta_psnr"]["vector"] == 0.0
    assert all(value == 0.0 for value in result["delta_psnr"]["vector"])


def test_a_model_that_uses_its_actions_is_controllable_even_with_noise():
    model = linear(noise_std=0.05)
    result = metrics.controllability(model, sample_batch(model, 8, 15), context=5)
    assert result["mean_delta_psnr"]["vector"] > 1.0
    assert result["mean_latent_delta_db"] > 1.0


def test_latent_controllability_is_zero_for_a_model_that_ignores_its_actions():
    blind = linear(action_matrix=None, noise_std=0.05)
    result = metrics.controllability(blind, sample_batch(blind, 8, 15), context=5)
    assert result["mean_latent_delta_db"] == 0.0 and set(result["latent_delta_db"]) == {0.0}


class LatentOnly(LinearGaussianModel):
    """The linear model without its decoder, as JEPA and TD-MPC2 are."""

    can_decode = False


def test_a_model_without_a_decoder_is_measured_in_latent_space_only():
    model = LatentOnly(rotation(0.3, 0.95), ACTIONS, 0.05, action_size=2)
    result = metrics.controllability(model, sample_batch(model, 8, 15), context=5)
    assert result["defined"] and result["delta_psnr"] == {} and "cannot decode" in result["notes"]
    assert result["mean_latent_delta_db"] > 1.0


def test_latent_delta_is_the_log_ratio_of_the_two_squared_errors():
    target = torch.zeros(2, 3, 4)
    with_real = torch.full((2, 3, 4), 0.1)  # MSE 0.01
    with_random = torch.full((2, 3, 4), 1.0)  # MSE 1: 100 times larger, so 20 dB
    assert torch.allclose(
        metrics.latent_delta_db(target, with_real, with_random), torch.full((3,), 20.0, dtype=torch.float64)
    )


# --- suites: files and figures --------------------------------------------------------------


def test_suites_write_json_and_figures(tmp_path):
    truth = linear(noise_std=0.1)
    batch = sample_batch(truth, 8, 20)
    settings = SuiteSettings(samples=8)
    for suite in ("horizon", "calibration", "bound", "dream", "controllability"):
        result = evaluate_suite(truth, batch, suite, settings)
        written = write_suite(tmp_path, suite, result)
        assert json.loads(written[0].read_text())["model"] == "LinearGaussianModel"
        assert (tmp_path / "figures" / f"eval_{suite}.png").is_file()
    # Several models overlaid in one horizon figure.
    other = evaluate_suite(linear(matrix=rotation(0.35, 0.95)), batch, "horizon", settings)
    assert plot_suite(
        "horizon", [evaluate_suite(truth, batch, "horizon", settings), other], tmp_path / "compare.png"
    ).is_file()


def test_episode_windows_stay_inside_episodes():
    episodes = [
        {
            "vector": np.full((length, 2), index, dtype=np.float32),
            "action": np.zeros((length, 1)),
            "reward": np.zeros(length, np.float32),
            "is_first": np.arange(length) == 0,
            "is_last": np.arange(length) == length - 1,
            "is_terminal": np.zeros(length, bool),
        }
        for index, length in enumerate((5, 12, 30))
    ]
    batch = episode_windows(episodes, count=20, length=10)
    assert batch.obs["vector"].shape == (20, 10, 2)
    for window in batch.obs["vector"]:
        assert np.all(window == window[0, 0]) and window[0, 0] in (1, 2)  # never the 5-step episode


# --- every registered model family: the horizon suite on random data ------------------------

VECTOR = spaces.Dict({"vector": spaces.Box(-1.0, 1.0, (3,), np.float32)})
PIXELS = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
BOX_ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)

#: Tiny widths for the families we know; a family registered later is tried with its defaults.
TINY = {
    "mlp": {"hidden_size": 16, "layers": 1},
    "rssm": {"size": "tiny", "stochastic_size": 4},
    "genie": {"size": "tiny"},
    "tdmpc": {"size": "1M", "encoder_width": 16, "mlp_width": 16, "latent_size": 16, "q_functions": 2},
}


def tiny_config(name: str, config_class):
    if name == "vae-mdnrnn":
        import wmlab.models.vae_mdnrnn as vae

        return config_class(
            vae=vae.ConvVAEConfig(latent_size=4, channels=(4, 4, 4, 4)),
            mdnrnn=vae.MDNRNNConfig(hidden_size=8, mixtures=2),
        )
    fields = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{key: value for key, value in TINY.get(name, {}).items() if key in fields})


def build_tiny(name: str):
    """(model, observation space, action space) or a pytest skip with the reason."""
    entry = MODELS.get(name)
    if name == "tabular":
        return entry.load()(num_states=6, num_actions=3), spaces.Dict({"state": spaces.Discrete(6)}), spaces.Discrete(3)
    if entry.config is None:
        pytest.skip(f"{name} has no config class: no generic tiny constructor")
    model_class, config = entry.load(), tiny_config(name, entry.load_config())
    reasons = []
    for observation_space in (VECTOR, PIXELS):
        try:
            return model_class(config, observation_space, BOX_ACTIONS), observation_space, BOX_ACTIONS
        except Exception as error:  # the family does not take this space; try the next one
            reasons.append(f"{type(error).__name__}: {error}")
    pytest.skip(f"cannot build {name} on a small vector or pixel space: {'; '.join(reasons)}")


def random_batch(observation_space, action_space, batch_size: int = 2, length: int = 9, seed: int = 0) -> Batch:
    generator = np.random.default_rng(seed)
    obs = {}
    for key, space in observation_space.spaces.items():
        if isinstance(space, spaces.Discrete):
            obs[key] = generator.integers(0, space.n, size=(batch_size, length))
        elif space.dtype == np.uint8:
            obs[key] = generator.integers(0, 256, size=(batch_size, length, *space.shape), dtype=np.uint8)
        else:
            obs[key] = generator.uniform(-1, 1, size=(batch_size, length, *space.shape)).astype(np.float32)
    if isinstance(action_space, spaces.Discrete):
        action = generator.integers(0, action_space.n, size=(batch_size, length))
    else:
        action = generator.uniform(-1, 1, size=(batch_size, length, *action_space.shape)).astype(np.float32)
    is_first = np.zeros((batch_size, length), bool)
    is_first[:, 0] = True
    flags = np.zeros((batch_size, length), bool)
    return Batch(
        obs=obs,
        action=action,
        reward=generator.normal(size=(batch_size, length)).astype(np.float32),
        is_first=is_first,
        is_last=flags,
        is_terminal=flags,
    )


def build_tiny_for_evaluation(name: str):
    """`build_tiny` with seeded weights, in evaluation mode (dropout off)."""
    torch.manual_seed(0)
    model, observation_space, action_space = build_tiny(name)
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model, observation_space, action_space


def evaluation_batch(model, observation_space, action_space) -> Batch:
    """`random_batch`, with the actions a latent-action family (Genie) reads in the frames in
    place of the real ones, which it never takes."""
    batch = random_batch(observation_space, action_space)
    if callable(getattr(model, "infer_actions", None)):
        from wmlab.eval.grounding import latent_action_batch

        batch = latent_action_batch(model, batch)
    return batch


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_family_runs_the_horizon_suite(name):
    model, observation_space, action_space = build_tiny_for_evaluation(name)
    result = metrics.horizon_errors(model, evaluation_batch(model, observation_space, action_space), context=3)
    assert result["steps"] == 6 and result["horizons"] == [1, 5, 6]
    values = [
        value for curves in (result["open_loop"], result["filtering"]) for curve in curves.values() for value in curve
    ]
    assert values, f"{name} produced no metric at all: {result['notes']}"
    assert all(value is not None and math.isfinite(value) for value in values)
    if getattr(model, "can_decode", False):
        assert any(key.split("/")[0] in observation_space.spaces for key in result["open_loop"])
    else:
        assert "latent/distance" in result["open_loop"]


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_family_is_measured_for_controllability(name):
    model, observation_space, action_space = build_tiny_for_evaluation(name)
    result = metrics.controllability(model, evaluation_batch(model, observation_space, action_space), context=3)
    if name == "tabular":  # cell indices: no latent vector and no PSNR, and the result says so
        assert not result["defined"] and "no continuous latent" in result["reason"]
        return
    assert result["defined"] and len(result["latent_delta_db"]) == 6
    assert all(value is not None and math.isfinite(value) for value in result["latent_delta_db"])


# --- the CLI on a tiny trained run -----------------------------------------------------------


def test_eval_suites_through_the_cli(tmp_path):
    from wmlab.cli import main

    run_dir = tmp_path / "run"
    train = [
        "train",
        "--algo",
        "mpc",
        "--env",
        "two-rooms-state",
        "--run-dir",
        run_dir,
        "--train.steps",
        120,
        "--train.learning-starts",
        40,
        "--train.batch-size",
        4,
        "--train.sequence-length",
        8,
        "--train.eval-every",
        0,
        "--train.eval-episodes",
        1,
        "--train.no-progress",
        "--train.no-tensorboard",
        "--agent.model.hidden-size",
        16,
        "--agent.planner.candidates",
        8,
        "--agent.planner.horizon",
        2,
        "--agent.random-steps",
        40,
    ]
    assert main([str(argument) for argument in train]) == 0
    # The replay holds no completed episode this early, so the suites collect fresh ones.
    common = ["--sequences", "4", "--horizon", "8", "--episodes", "1"]
    assert main(["eval", str(run_dir), "--suite", "all", *common]) == 0
    for suite in ("horizon", "calibration", "bound", "dream", "controllability"):
        assert (run_dir / "eval" / f"{suite}.json").is_file()
    assert (run_dir / "figures" / "eval_horizon.png").is_file()
    out = tmp_path / "compare.png"
    assert main(["eval", "--compare", str(run_dir), str(run_dir), "--suite", "horizon", "--out", str(out)]) == 0
    assert out.is_file() and len(json.loads(out.with_suffix(".json").read_text())["results"]) == 2
    assert main(["eval", str(run_dir), "--suite", "nonsense"]) == 2
