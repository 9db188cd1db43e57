"""World Models: the mixture density against hand-computed values, temperature sampling, the
V + M world model's protocol, the imagined environment, C and CMA-ES (with an exact resume), and
a tiny-budget run of the whole pipeline with resumption and `wmlab eval`."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.agents.world_models.agent import LinearController, WorldModelsAgent
from wmlab.agents.world_models.config import (
    CollectConfig,
    ControllerTrainingConfig,
    MDNRNNTrainingConfig,
    VAETrainingConfig,
    WorldModelsConfig,
    default_config,
)
from wmlab.agents.world_models.evolution import CMAES
from wmlab.core.errors import RunDirectoryError, ShapeError
from wmlab.core.protocols import Agent, WorldModel
from wmlab.core.serialization import load_state
from wmlab.core.types import Batch
from wmlab.envs.imagined import ImaginedEnv
from wmlab.models.vae_mdnrnn import (
    VAEMDNRNN,
    ConvVAEConfig,
    MDNRNNConfig,
    VAEMDNRNNConfig,
    mixture_log_likelihood,
    prepare_frames,
    sample_mixture,
)
from wmlab.pipelines.world_models.pipeline import Pipeline, run_pipeline
from wmlab.pipelines.world_models.rollouts import RealRollouts, RealRolloutSettings

torch.set_num_threads(1)

IMAGES = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
BOX = spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32), dtype=np.float32)
TINY_MODEL = VAEMDNRNNConfig(
    vae=ConvVAEConfig(latent_size=4, channels=(4, 8, 8, 8)), mdnrnn=MDNRNNConfig(hidden_size=16, mixtures=3)
)


def normal_density(x, mean, std):
    return math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


# ------------------------------------------------------------------------------ mixture density


def test_mixture_log_likelihood_matches_a_hand_computed_mixture():
    x = [0.3, -1.2]
    weights = [0.25, 0.75]  # softmax of log(0.25), log(0.75)
    means = [[0.0, -1.0], [1.0, 0.5]]
    stds = [[1.0, 0.5], [2.0, 0.25]]
    expected = math.log(
        sum(
            weight * normal_density(x[0], mean[0], std[0]) * normal_density(x[1], mean[1], std[1])
            for weight, mean, std in zip(weights, means, stds)
        )
    )
    logits = torch.log(torch.tensor(weights))[:, None]  # (K, G=1)
    value = mixture_log_likelihood(torch.tensor(x), logits, torch.tensor(means), torch.tensor(stds).log())
    assert value.item() == pytest.approx(expected, rel=1e-5)

    # One mixture per dimension (the authors' factorisation): a sum of per-dimension logs.
    per_dimension = torch.log(torch.tensor([[0.25, 0.6], [0.75, 0.4]]))  # (K, G=Z)
    expected = sum(
        math.log(
            sum(per_dimension[k, j].exp().item() * normal_density(x[j], means[k][j], stds[k][j]) for k in range(2))
        )
        for j in range(2)
    )
    value = mixture_log_likelihood(torch.tensor(x), per_dimension, torch.tensor(means), torch.tensor(stds).log())
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # Far from every component it stays finite (logsumexp, not a log of a sum of exps).
    assert torch.isfinite(
        mixture_log_likelihood(torch.tensor([1e3, -1e3]), logits, torch.tensor(means), torch.tensor(stds).log())
    )


@pytest.mark.parametrize("groups", [1, 3], ids=["shared", "per-dimension"])
def test_temperature_to_zero_gives_the_most_likely_components_mean(groups):
    K, Z = 4, 3
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(64, K, Z, generator=generator)
    log_stds = torch.zeros(64, K, Z)
    logits = torch.zeros(64, K, groups)
    logits[:, 2] = 1.0  # component 2 is the most likely, though not overwhelmingly at tau = 1
    exact = sample_mixture(logits, means, log_stds, temperature=0.0)
    assert torch.equal(exact, means[:, 2])
    nearly = sample_mixture(logits, means, log_stds, temperature=1e-4, generator=generator)
    assert torch.allclose(nearly, means[:, 2], atol=0.05)
    at_one = sample_mixture(logits, means, log_stds, temperature=1.0, generator=generator)
    assert (at_one - means[:, 2]).abs().max() > 0.5


def test_temperature_scales_the_standard_deviation_by_its_square_root():
    generator = torch.Generator().manual_seed(1)
    logits, means, log_stds = (
        torch.zeros(20000, 1, 1),
        torch.zeros(20000, 1, 2),
        torch.full((20000, 1, 2), math.log(0.5)),
    )
    for temperature in (1.0, 4.0):
        samples = sample_mixture(logits, means, log_stds, temperature, generator)
        assert samples.std().item() == pytest.approx(0.5 * math.sqrt(temperature), rel=0.03)


# -------------------------------------------------------------------------------------- V + M


def random_frames(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 64, 64, 3), dtype=np.uint8)


def test_world_model_protocol_shapes_and_finite_loss():
    model = VAEMDNRNN(TINY_MODEL, IMAGES, BOX)
    assert isinstance(model, WorldModel)
    B, T = 3, 5
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_first[1, 3] = True  # a reset inside the window
    actions = np.random.default_rng(0).uniform(-1, 1, (B, T, 2)).astype(np.float32)
    states, last = model.observe({"image": random_frames(B, T)}, actions, is_first)
    assert {key: tuple(value.shape) for key, value in states.items()} == {
        "latent": (B, T, 4),
        "hidden": (B, T, 16),
        "cell": (B, T, 16),
    }
    assert torch.equal(states["hidden"][1, 3], torch.zeros(16))  # h_t = 0 where an episode starts
    assert not torch.equal(states["hidden"][1, 4], torch.zeros(16))
    trajectory = model.imagine(last, torch.zeros(B, 6, 2), decode=True)
    assert trajectory.rewards.shape == trajectory.continues.shape == (B, 6)
    assert (
        trajectory.observations["image"].shape == (B, 6, 64, 64, 3)
        and trajectory.observations["image"].dtype == torch.uint8
    )
    assert model.features(last).shape == (B, 20)
    policy_trajectory = model.imagine(last, lambda state: torch.zeros(state["latent"].shape[0], 2), horizon=2)
    assert policy_trajectory.actions.shape == (B, 2, 2)
    batch = Batch(
        obs={"image": random_frames(B, T)},
        action=actions,
        reward=np.ones((B, T), np.float32),
        is_first=is_first,
        is_last=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
    )
    loss, metrics = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and {
        "loss/reconstruction",
        "loss/kl",
        "loss/next_latent",
        "loss/reward",
        "loss/done",
    } <= set(metrics)
    with pytest.raises(ShapeError, match="obs\\['image'\\]"):
        model.observe({"image": random_frames(B, T)[:, :, :32]}, actions, is_first)
    with pytest.raises(ShapeError, match="action"):
        model.observe({"image": random_frames(B, T)}, actions[..., :1], is_first)


def test_resets_restart_the_lstm_and_the_fused_path_matches_the_stepwise_one():
    model = VAEMDNRNN(TINY_MODEL, IMAGES, BOX)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 7, 6, generator=generator)
    hidden, cell = torch.randn(4, 16, generator=generator), torch.randn(4, 16, generator=generator)
    is_first = torch.zeros(4, 7, dtype=torch.bool)
    is_first[:2, 0] = True
    fused, _, (fused_hidden, _) = model.mdnrnn.unroll(inputs, is_first, hidden, cell)
    stepwise, cells, (step_hidden, _) = model.mdnrnn.unroll(inputs, is_first, hidden, cell, keep_cells=True)
    assert cells.shape == (4, 7, 16)
    assert torch.allclose(fused, stepwise, atol=1e-6) and torch.allclose(fused_hidden, step_hidden, atol=1e-6)
    assert torch.equal(stepwise[:2, 0], torch.zeros(2, 16))  # h_0 = 0 where the episode starts
    is_first[2, 4] = True
    restarted, _, _ = model.mdnrnn.unroll(inputs, is_first, hidden, cell)
    fresh, _, _ = model.mdnrnn.unroll(
        inputs[2:3, 4:], torch.tensor([[True, False, False]]), torch.zeros(1, 16), torch.zeros(1, 16)
    )
    assert torch.allclose(restarted[2, 4:], fresh[0], atol=1e-6)


def test_prepare_frames_crops_and_resizes():
    frames = np.zeros((2, 96, 96, 3), np.uint8)
    frames[:, 84:] = 255  # a dashboard the crop removes
    prepared = prepare_frames(frames, (0, 12, 0, 0))
    assert prepared.shape == (2, 64, 64, 3) and prepared.dtype == np.uint8 and prepared.max() == 0
    assert prepare_frames(prepared) is prepared
    with pytest.raises(ValueError, match="crop"):
        prepare_frames(frames, (50, 50, 0, 0))


# ----------------------------------------------------------------------------- imagined env


def test_imagined_env_shapes_resets_and_seeding():
    model = VAEMDNRNN(TINY_MODEL, IMAGES, BOX).eval()
    start = {"image": random_frames(5, 1)}
    env = ImaginedEnv(model, start, batch_size=6, max_episode_steps=4, imagine_kwargs={"temperature": 1.0}, seed=3)
    observation, info = env.reset()
    assert observation["features"].shape == (6, 20) and info["start_index"].shape == (6,)
    rewards = []
    for step in range(4):
        observation, reward, terminated, truncated, extra = env.step(np.zeros((6, 2), np.float32))
        assert reward.shape == terminated.shape == truncated.shape == extra["continue"].shape == (6,)
        rewards.append(reward)
    assert bool(env.done.all()) and not bool((terminated & truncated).any())
    _, reward, _, _, _ = env.step(np.zeros((6, 2), np.float32))
    assert torch.equal(reward, torch.zeros(6))  # finished rows stay finished until the next reset
    frames = env.render()
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.uint8
    env.reset(seed=3)
    assert not bool(env.done.any()) and env.elapsed_steps == 0
    replay = [env.step(np.zeros((6, 2), np.float32))[1] for _ in range(4)]
    assert all(torch.equal(first, second) for first, second in zip(rewards, replay))
    env.reset(options={"indices": [0, 1, 2, 3, 4, 4]})
    with pytest.raises(ValueError, match="indices"):
        env.reset(options={"indices": [0, 9, 0, 0, 0, 0]})
    decoded = ImaginedEnv(model, start, batch_size=2, max_episode_steps=2, observations="decoded")
    assert decoded.reset()[0]["image"].shape == (2, 64, 64, 3)


def test_imagined_env_is_generic_over_the_protocol():
    from wmlab.models.mlp import MLPWorldModel, MLPWorldModelConfig

    model = MLPWorldModel(
        MLPWorldModelConfig(hidden_size=8),
        spaces.Dict({"vector": spaces.Box(-1, 1, (3,), np.float32)}),
        spaces.Box(-1, 1, (2,), np.float32),
    )
    env = ImaginedEnv(
        model,
        {"vector": np.zeros((4, 1, 3), np.float32)},
        batch_size=3,
        max_episode_steps=2,
        initial_actions=np.zeros((4, 1, 2), np.float32),
    )
    observation, _ = env.reset(seed=0)
    assert observation["state"].shape == (3, 3) and "features" not in observation
    _, reward, _, _, _ = env.step(np.zeros((3, 2), np.float32))
    assert reward.shape == (3,)


# ------------------------------------------------------------------------------- C and CMA-ES


def test_linear_controller_has_the_papers_867_parameters_and_respects_bounds():
    car_racing = spaces.Box(
        np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32), dtype=np.float32
    )
    controller = LinearController(32 + 256, car_racing)
    assert controller.parameter_count == 867
    parameters = torch.randn(5, 867) * 10
    actions = controller(parameters, torch.randn(5, 2, 288))
    assert actions.shape == (5, 2, 3)
    assert (actions[..., 0].abs() <= 1).all() and (actions[..., 1:] >= 0).all() and (actions[..., 1:] <= 1).all()
    discrete = LinearController(4, spaces.Discrete(3))
    parameters = torch.zeros(1, discrete.parameter_count)
    parameters[0, 12 + 2] = 1.0  # bias of action 2
    assert discrete(parameters, torch.zeros(1, 1, 4)).tolist() == [[2]]


def test_cmaes_improves_a_toy_objective_and_resumes_exactly():
    target = np.linspace(-1, 1, 6)

    def fitness(candidates):
        return -np.square(candidates - target).sum(1)

    strategy = CMAES(6, population=12, initial_sigma=0.3, seed=0)
    start = fitness(strategy.mean[None])[0]
    for _ in range(40):
        strategy.tell(fitness(strategy.ask()))
    assert fitness(strategy.mean[None])[0] > 0.01 * start  # within a tenth of the distance at the start
    state = strategy.state_dict()
    assert state["generation"] == 40 and state["covariance"].shape == (6, 6)
    json.dumps({key: value for key, value in state.items() if not isinstance(value, np.ndarray)})
    restored = CMAES.from_state_dict(state)
    assert restored.generation == 40
    np.testing.assert_array_equal(restored.ask(), strategy.ask())


# ------------------------------------------------------------------------------ the pipeline


def tiny_config(**changes) -> WorldModelsConfig:
    config = WorldModelsConfig(
        model=TINY_MODEL,
        collect=CollectConfig(episodes=3, max_steps=12),
        vae=VAETrainingConfig(epochs=1, batch_size=16, log_every=1),
        mdnrnn=MDNRNNTrainingConfig(updates=4, batch_size=4, sequence_length=8, log_every=2, checkpoint_every=2),
        controller=ControllerTrainingConfig(
            generations=3, population=4, rollouts=2, max_steps=10, eval_every=2, eval_episodes=1, envs_per_batch=4
        ),
        dream=True,
        temperature=1.15,
        evaluation_episodes=2,
        dream_evaluation_episodes=4,
        video_steps=5,
    )
    return dataclasses.replace(config, **changes)


@pytest.mark.filterwarnings("ignore:no recorded episode terminated")
def test_pipeline_smoke_resume_and_eval(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with pytest.warns(
        UserWarning, match="done head learns from no terminal example"
    ):  # 12-step episodes never reach the goal
        summary = run_pipeline(tiny_config(), "two-rooms", run_dir, env_kwargs={"reward": "dense"}, progress=False)
    assert {"eval/return", "dream/return", "controller/parameters"} <= set(summary) and summary[
        "controller/parameters"
    ] == 2 * (4 + 16 + 1)
    for path in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "figures/vae_reconstructions.png",
        "figures/controller_curve.png",
        "videos/real_rollout.gif",
        "videos/dream_rollout.gif",
        "checkpoints/rank0/agent.safetensors",
    ):
        assert (run_dir / path).is_file(), path
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(record["step"], int) and "time" in record for record in records)
    assert any("controller/real_return" in record for record in records) and any(
        "vae/loss" in record for record in records
    )
    final = np.asarray(
        Pipeline(tiny_config(), "two-rooms", run_dir, 0, {"reward": "dense"}, "cpu", 0, False, False).load_result(
            "controller"
        )["parameters"]
    )

    # A rerun skips every finished stage.
    calls = []
    monkeypatch.setattr(Pipeline, "collect", lambda self: calls.append("collect"))
    assert (
        run_pipeline(tiny_config(), "two-rooms", run_dir, env_kwargs={"reward": "dense"}, progress=False)["eval/return"]
        == summary["eval/return"]
    )
    assert calls == []
    monkeypatch.undo()

    # Changed settings are refused, naming them, unless forced.
    with pytest.raises(RunDirectoryError, match="vae.epochs"):
        run_pipeline(
            tiny_config(vae=VAETrainingConfig(epochs=2, batch_size=16)),
            "two-rooms",
            run_dir,
            env_kwargs={"reward": "dense"},
            progress=False,
        )

    # CMA-ES interrupted after its first generation resumes from its checkpoint to the same result.
    resumed_dir = tmp_path / "resumed"
    original_save = Pipeline.save

    def interrupt_after_first_generation(self, stage, name, state):
        original_save(self, stage, name, state)
        if stage == "controller" and name == "checkpoint":
            raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "save", interrupt_after_first_generation)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(
            tiny_config(), "two-rooms", resumed_dir, env_kwargs={"reward": "dense"}, progress=False, models_from=run_dir
        )
    monkeypatch.undo()
    assert (resumed_dir / "stages" / "controller" / "checkpoint.json").is_file()
    run_pipeline(tiny_config(), "two-rooms", resumed_dir, env_kwargs={"reward": "dense"}, progress=False)
    resumed = Pipeline(
        tiny_config(), "two-rooms", resumed_dir, 0, {"reward": "dense"}, "cpu", 0, False, False
    ).load_result("controller")["parameters"]
    np.testing.assert_array_equal(np.asarray(resumed), final)

    # --models-from reuses the stages whose settings match, in order: here the recording and V, not M.
    other_m = tiny_config(mdnrnn=MDNRNNTrainingConfig(updates=3, batch_size=4, sequence_length=8))
    retrained = tmp_path / "retrained"
    run_pipeline(
        other_m,
        "two-rooms",
        retrained,
        env_kwargs={"reward": "dense"},
        progress=False,
        models_from=run_dir,
        stages=("collect", "vae", "mdnrnn"),
    )
    assert (retrained / "stages" / "vae" / "result.safetensors").read_bytes() == (
        run_dir / "stages" / "vae" / "result.safetensors"
    ).read_bytes()
    records = [json.loads(line) for line in (retrained / "metrics.jsonl").read_text().splitlines()]
    assert not any("vae/loss" in record for record in records) and any("mdnrnn/loss" in record for record in records)
    assert (retrained / "figures" / "vae_reconstructions.png").read_bytes() == (
        run_dir / "figures" / "vae_reconstructions.png"
    ).read_bytes()

    # V and M were fitted by the offline trainer: stages/mdnrnn/run is an ordinary offline run of the
    # whole V-M model (V as the V stage left it), which `wmlab eval` reads.
    from wmlab.cli import main
    from wmlab.runs.directory import load_trained_model

    for stage, updates in (("vae", 3), ("mdnrnn", 4)):  # 39 frames in batches of 16, one epoch; 4 updates
        config = json.loads((run_dir / "stages" / stage / "run" / "config.json").read_text())
        assert config["kind"] == "offline" and config["model"] == "vae-mdnrnn" and config["train"]["updates"] == updates
        assert not (run_dir / "stages" / stage / "checkpoint.json").exists()
    _, model = load_trained_model(run_dir / "stages" / "mdnrnn" / "run")
    results = {stage: load_state(run_dir / "stages" / stage, "result")["weights"] for stage in ("vae", "mdnrnn")}
    for name, value in model.state_dict().items():
        part, key = name.split(".", 1)
        assert torch.equal(value, results[part][key]), name
    model_run = str(run_dir / "stages" / "mdnrnn" / "run")
    assert main(["eval", model_run, "--suite", "horizon", "--horizon", "2", "--context", "2", "--sequences", "2"]) == 0

    # The trained V-M-C acts through the Agent protocol, and `wmlab eval` evaluates the run.

    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    assert "eval/return" in json.loads((run_dir / "eval.json").read_text())


@pytest.mark.filterwarnings("ignore:no recorded episode terminated")
def test_an_interrupted_m_stage_resumes_its_offline_run_to_the_same_weights(tmp_path, monkeypatch):
    from wmlab.train.offline import OfflineTrainer

    stages, settings = ("collect", "vae", "mdnrnn"), {"env_kwargs": {"reward": "dense"}, "progress": False}
    run_pipeline(tiny_config(), "two-rooms", tmp_path / "whole", stages=stages, **settings)
    original = OfflineTrainer.save_checkpoint

    def interrupt_after_two_updates_of_m(self):
        original(self)
        if self.run_dir.parent.name == "mdnrnn" and self.counters.updates == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(OfflineTrainer, "save_checkpoint", interrupt_after_two_updates_of_m)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny_config(), "two-rooms", tmp_path / "resumed", stages=stages, **settings)
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "stages" / "mdnrnn" / "checkpoint.json").is_file()
    run_pipeline(tiny_config(), "two-rooms", tmp_path / "resumed", stages=stages, **settings)
    whole, resumed = (
        load_state(tmp_path / run / "stages" / "mdnrnn", "result")["weights"] for run in ("whole", "resumed")
    )
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[key], resumed[key]) for key in whole)
    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "mdnrnn/loss" in record]
    assert steps == sorted(set(steps)) == [2, 4]  # logged once each, across the interruption


def test_agent_acts_on_raw_frames_and_needs_the_pipeline_to_learn():
    config = dataclasses.replace(tiny_config(), frame_crop=(0, 12, 0, 0))
    raw = spaces.Dict({"image": spaces.Box(0, 255, (96, 96, 3), np.uint8)})
    agent = WorldModelsAgent(config, raw, BOX, seed=0)
    assert isinstance(agent, Agent)
    frames = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    actions, state = agent.act({"image": frames, "is_first": np.ones(2, bool)}, None)
    assert actions.shape == (2, 2) and actions.dtype == np.float32
    actions, state = agent.act({"image": frames, "is_first": np.zeros(2, bool)}, state)
    assert state["model"]["hidden"].shape == (2, 16) and not torch.equal(state["model"]["hidden"], torch.zeros(2, 16))
    with pytest.raises(Exception, match="wmlab pipeline world-models"):
        agent.update(None)


def test_real_rollouts_in_worker_processes_match_this_process():
    two_rooms_actions = spaces.Box(-1.0, 1.0, (2,), np.float32)
    model = VAEMDNRNN(TINY_MODEL, IMAGES, two_rooms_actions).eval()
    controller = LinearController(20, two_rooms_actions)
    settings = RealRolloutSettings(
        env_id="two-rooms",
        env_kwargs={"reward": "dense", "max_episode_steps": 6},
        sample_latents=False,
        envs_per_batch=2,
    )
    parameters = np.random.default_rng(0).normal(size=(2, controller.parameter_count)) * 0.5
    seeds = np.array([[1, 2], [3, 4]])
    with RealRollouts(model, controller, settings, workers=1) as local:
        here = local.returns(parameters, seeds)
    with RealRollouts(model, controller, settings, workers=2) as pool:
        there = pool.returns(parameters, seeds)
    np.testing.assert_allclose(here[0], there[0], atol=1e-9)
    np.testing.assert_array_equal(here[1], there[1])


def test_presets():
    assert default_config("CarRacing-v3").frame_crop == (0, 12, 0, 0)
    assert (
        default_config("CarRacing-v3").model.mdnrnn.predict_done is False
        and default_config("two-rooms").model.mdnrnn.predict_done
    )
    assert default_config("two-rooms").frame_crop == (0, 0, 0, 0)
    quick = default_config("CarRacing-v3", quick=True)
    assert quick.collect.episodes < 10 and quick.controller.population < 64


@pytest.mark.filterwarnings("ignore:no recorded episode terminated")
def test_pipeline_command_trains_c_in_reality(tmp_path, capsys):
    from wmlab.pipelines.world_models.pipeline import pipeline_command

    run_dir = tmp_path / "real"
    tiny = [
        "--model.vae.latent-size",
        "4",
        "--model.vae.channels",
        "4",
        "8",
        "8",
        "8",
        "--model.mdnrnn.hidden-size",
        "8",
        "--collect.episodes",
        "2",
        "--collect.max-steps",
        "8",
        "--vae.epochs",
        "1",
        "--mdnrnn.updates",
        "2",
        "--controller.generations",
        "2",
        "--controller.population",
        "4",
        "--controller.rollouts",
        "1",
        "--controller.max-steps",
        "6",
        "--evaluation-episodes",
        "1",
        "--dream-evaluation-episodes",
        "2",
        "--video-steps",
        "3",
    ]
    code = pipeline_command(
        [
            "--env",
            "two-rooms",
            "--env-kwargs",
            '{"max_episode_steps": 10}',
            "--run-dir",
            str(run_dir),
            "--quick",
            "--no-progress",
            *tiny,
        ]
    )
    assert code == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["algorithm"] == "world-models"
        and config["agent"]["dream"] is False
        and config["agent"]["model"]["vae"]["latent_size"] == 4
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["dream"] is False
        and summary["controller/parameters"] == 2 * (4 + 8 + 1)
        and summary["eval/length"] == 10
    )
    curve = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "controller/fitness_mean" in line
    ]
    assert [record["step"] for record in curve] == [1, 2]


def test_restarted_stages_do_not_log_a_step_twice(tmp_path):
    pipeline = Pipeline(tiny_config(), "two-rooms", tmp_path, 0, {}, "cpu", 0, False, False)
    for step in (1, 2, 3):
        pipeline.log(step, {"vae/loss": float(step)})
    pipeline.log(2, {"mdnrnn/loss": 1.0})
    pipeline.log(5, {"eval/return": 1.0, "dream/return": 2.0})
    pipeline.forget_metrics("vae/", 1)
    pipeline.forget_metrics(("eval/", "dream/"), -1)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(record["step"], sorted(set(record) - {"step", "time"})) for record in records] == [
        (1, ["vae/loss"]),
        (2, ["mdnrnn/loss"]),
    ]
