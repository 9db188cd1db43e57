"""The studies (wmlab.studies): the occlusion and perturbation wrappers, Dreamer's counterfactual
augmentation, and a smoke run of every `wmlab study NAME --quick`."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_dreamer import tiny
from test_rssm import BOX, VECTORS, random_batch

from wmlab.agents.dreamer.agent import DreamerAgent
from wmlab.agents.dreamer.config import DreamerConfig
from wmlab.agents.dreamer.hooks import CounterfactualStarts
from wmlab.cli import main
from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.envs.adapter import make_env

# ----------------------------------------------------------------------------------------------
# Occlusion


def run_occluded(actions_seed: int, steps: int = 120, **options):
    """(observation, info) of every step of one episode with random actions drawn from `actions_seed`."""
    env = make_env("occluded", env="two-rooms-state", env_kwargs={"max_episode_steps": 1000}, **options)
    env.action_space.seed(actions_seed)
    observation, info = env.reset(seed=3)
    records = [(observation, info)]
    for _ in range(steps):
        observation, _, terminated, truncated, info = env.step(env.action_space.sample())
        records.append((observation, info))
        if terminated or truncated:
            break
    env.close()
    return records


def test_occlusion_blanks_exactly_the_reported_steps_and_keeps_the_truth():
    records = run_occluded(0, start_probability=0.1, length=4)
    first_observation, first_info = records[0]
    assert not first_info["occluded"] and first_info["occlusion_step"] == 0
    occluded = [info["occluded"] for _, info in records]
    assert 10 < sum(occluded) < len(records) - 10, "the test needs both occluded and clear steps"
    previous_k = 0
    for observation, info in records:
        k = info["occlusion_step"]
        assert info["occluded"] == (k > 0)
        truth = info["true_observation"]["vector"]
        if info["occluded"]:
            assert np.all(observation["vector"] == 0) and observation["vector"].dtype == truth.dtype
            assert np.any(truth != 0)
            # a run counts 1, 2, ..., length; a new run may start right after a full one
            assert k == previous_k + 1 or (k == 1 and previous_k in (0, 4))
        else:
            np.testing.assert_array_equal(observation["vector"], truth)
            assert previous_k in (0, 4), "a run ended before its length"
        assert k <= 4
        previous_k = k


def test_the_occlusion_schedule_depends_on_the_seed_not_on_the_actions():
    first = [info["occlusion_step"] for _, info in run_occluded(0, start_probability=0.1, length=3)]
    second = [info["occlusion_step"] for _, info in run_occluded(1, start_probability=0.1, length=3)]
    shared = min(len(first), len(second))
    assert shared > 20 and first[:shared] == second[:shared]


def test_occlusion_blanks_images_and_rejects_bad_options():
    env = make_env("occluded", env="two-rooms", start_probability=1.0, length=2)
    observation, info = env.reset(seed=0)
    assert observation["image"].any()
    observation, *_, info = env.step(env.action_space.sample())
    assert info["occlusion_step"] == 1 and observation["image"].dtype == np.uint8 and not observation["image"].any()
    assert info["true_observation"]["image"].any()
    env.close()
    with pytest.raises(WmlabError):
        make_env("occluded", env="two-rooms-state", length=0)
    with pytest.raises(WmlabError):
        make_env("occluded", env="two-rooms-state", keys=("image",))


# ----------------------------------------------------------------------------------------------
# Perturbations


def test_observation_noise_has_the_configured_statistics():
    env = make_env("perturbed", env="two-rooms-state", env_kwargs={"max_episode_steps": 1000}, observation_noise=0.2)
    differences = []
    observation, info = env.reset(seed=0)
    for _ in range(400):
        differences.append(observation["vector"] - info["true_observation"]["vector"])
        observation, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            observation, info = env.reset()
    env.close()
    noise = np.concatenate(differences)
    assert noise.dtype == np.float32 and noise.size >= 2000
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.2) < 0.02
    assert abs(np.corrcoef(noise[:-1], noise[1:])[0, 1]) < 0.1


def test_image_noise_stays_in_range():
    env = make_env("perturbed", env="two-rooms", image_noise=0.1)
    observation, info = env.reset(seed=0)
    difference = observation["image"].astype(np.float32) - info["true_observation"]["image"].astype(np.float32)
    assert observation["image"].dtype == np.uint8 and 10 < difference.std() < 30
    env.close()


def test_velocity_kicks_hit_every_kth_step_and_change_the_physics():
    pytest.importorskip("dm_control")
    plain = make_env("dmc:cartpole-swingup", action_repeat=2)
    kicked = make_env(
        "perturbed", env="dmc:cartpole-swingup", env_kwargs={"action_repeat": 2}, kick_std=1.0, kick_every=5
    )
    a, _ = plain.reset(seed=1)
    b, _ = kicked.reset(seed=1)
    np.testing.assert_array_equal(a["vector"], b["vector"])
    flags = []
    for step in range(1, 11):
        action = np.full(plain.action_space.shape, 0.3, np.float32)
        a, *_ = plain.step(action)
        b, *_, info = kicked.step(action)
        flags.append(info["kicked"])
        if step < 5:
            np.testing.assert_array_equal(a["vector"], b["vector"])
    assert flags == [step % 5 == 0 for step in range(1, 11)]
    assert not np.allclose(a["vector"], b["vector"])
    plain.close()
    kicked.close()
    with pytest.raises(WmlabError):
        make_env("perturbed", env="two-rooms-state", kick_std=1.0)


# ----------------------------------------------------------------------------------------------
# Counterfactual augmentation


def parameters(agent: DreamerAgent) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": value
        for part, module in agent.modules().items()
        for name, value in module.state_dict().items()
    }


def test_counterfactual_fraction_zero_is_bit_identical_to_plain_dreamer(monkeypatch):
    batch = random_batch(VECTORS, BOX, B=3, T=5)
    plain = DreamerAgent(tiny(DreamerConfig()), VECTORS, BOX, seed=0)
    off = DreamerAgent(
        replace(tiny(DreamerConfig()), counterfactual_fraction=0.0, counterfactual_kind="swap"), VECTORS, BOX, seed=0
    )

    def never(self, model, starts, generator):
        raise AssertionError("the counterfactual hook must not run at fraction 0")

    monkeypatch.setattr(CounterfactualStarts, "starts", never)
    assert off.hooks == []
    assert plain.update(batch) == off.update(batch)
    first, second = parameters(plain), parameters(off)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert torch.equal(plain.generator.get_state(), off.generator.get_state())


def test_counterfactual_augmentation_changes_only_behaviour_learning():
    batch = random_batch(VECTORS, BOX, B=3, T=5)
    plain = DreamerAgent(tiny(DreamerConfig()), VECTORS, BOX, seed=0)
    augmented = DreamerAgent(replace(tiny(DreamerConfig()), counterfactual_fraction=0.5), VECTORS, BOX, seed=0)
    plain.update(batch)
    augmented.update(batch)
    first, second = parameters(plain), parameters(augmented)
    # The world model learns before the intervention; the actor learns from the intervened starts.
    assert all(torch.equal(first[name], second[name]) for name in first if name.startswith("world_model."))
    assert any(not torch.equal(first[name], second[name]) for name in first if name.startswith("actor."))


def starts_of(agent: DreamerAgent, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = random_batch(VECTORS, BOX, B=4, T=6, seed=seed)
    with torch.no_grad():
        posterior, _ = agent.world_model.observe(batch.obs, batch.action, batch.is_first)
    return {"deter": posterior["deter"].flatten(0, 1), "stoch": posterior["stoch"].flatten(0, 1)}


def counterfactual(agent: DreamerAgent, starts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    (hook,) = agent.hooks
    assert isinstance(hook, CounterfactualStarts)
    return hook.starts(agent.world_model, starts, agent.generator)


def test_swap_passes_z_round_the_chosen_starts_and_keeps_h():
    agent = DreamerAgent(
        replace(tiny(DreamerConfig()), counterfactual_fraction=0.5, counterfactual_kind="swap"), VECTORS, BOX, seed=0
    )
    starts = starts_of(agent)
    N = starts["deter"].shape[0]
    # Sampled one-hot z of a tiny untrained model can repeat; an offset per start makes each z
    # distinct (the swap moves whole rows and does not look at their values).
    starts["stoch"] = starts["stoch"] + torch.arange(N, dtype=starts["stoch"].dtype)[:, None]
    changed = counterfactual(agent, starts)
    assert torch.equal(changed["deter"], starts["deter"])
    moved = [index for index in range(N) if not torch.equal(changed["stoch"][index], starts["stoch"][index])]
    assert len(moved) == round(0.5 * N)  # every chosen start takes another's z
    before = sorted(tuple(starts["stoch"][index].tolist()) for index in moved)
    after = sorted(tuple(changed["stoch"][index].tolist()) for index in moved)
    assert before == after  # a permutation among the chosen starts


def test_resample_draws_z_from_the_prior_and_keeps_h():
    agent = DreamerAgent(
        replace(tiny(DreamerConfig()), counterfactual_fraction=0.25, counterfactual_kind="resample"),
        VECTORS,
        BOX,
        seed=0,
    )
    starts = starts_of(agent)
    N = starts["deter"].shape[0]
    changed = counterfactual(agent, starts)
    assert torch.equal(changed["deter"], starts["deter"])
    moved = [index for index in range(N) if not torch.equal(changed["stoch"][index], starts["stoch"][index])]
    assert 1 <= len(moved) <= round(0.25 * N)
    model = agent.world_model
    one_hot = changed["stoch"].view(N, model.config.stochastic_size, model.classes)
    # still one-hot samples (up to the rounding of the straight-through estimator)
    assert torch.allclose(one_hot.sum(-1), torch.ones(N, model.config.stochastic_size), atol=1e-5)
    assert torch.allclose(one_hot.max(-1).values, torch.ones(N, model.config.stochastic_size), atol=1e-5)
    with pytest.raises(ValueError):
        DreamerAgent(replace(tiny(DreamerConfig()), counterfactual_kind="shuffle"), VECTORS, BOX, seed=0)


# ----------------------------------------------------------------------------------------------
# The studies, end to end at the smallest size


SMOKE = [
    "--quick",
    "--no-progress",
    "--threads",
    "1",
    "--steps",
    "120",
    "--eval-every",
    "0",
    "--env-kwargs",
    '{"action_repeat": 4, "time_limit": 160}',
    "--train-overrides",
    '{"learning_starts": 60, "train_ratio": 16}',
]
STUDY_OPTIONS = {
    "horizon": [],
    "counterfactual": ["--kick-every", "5"],
    "occlusion": [
        "--belief-horizon",
        "4",
        "--belief-start-probability",
        "0.2",
        "--start-probability",
        "0.1",
        "--length",
        "3",
    ],
}


@pytest.mark.parametrize("name", list(STUDY_OPTIONS))
def test_each_study_quick_run_writes_json_figure_and_markdown(name, tmp_path, capsys):
    pytest.importorskip("dm_control")
    out = tmp_path / name
    assert main(["study", name, "--out", str(out), *SMOKE, *STUDY_OPTIONS[name]]) == 0
    results = json.loads((out / f"{name}.json").read_text())
    figure = out / f"{name}.png"
    assert figure.stat().st_size > 5000 and figure.read_bytes()[:4] == b"\x89PNG"
    text = (out / f"{name}.md").read_text()
    assert results["comparison"] in text and f"({name}.png)" in text and "Measured at 120 steps over 1 seed" in text
    assert "fill in" not in text.lower() and "todo" not in text.lower()
    variants = results["variants"]
    assert len(variants) >= 2 and all(variant["seeds"] == [0] for variant in variants.values())
    if name == "horizon":
        assert set(variants) == {"plain", "horizon-c0.9"}
        assert all(variant["final"]["n"] == 1 for variant in variants.values())
        # Rerunning reuses the finished runs; other settings in the same directory are refused.
        capsys.readouterr()
        assert main(["study", name, "--out", str(out), *SMOKE]) == 0
        assert capsys.readouterr().out.count("reused") == 2
        with pytest.raises(RunDirectoryError):
            from wmlab.studies.horizon import HorizonArguments, run_horizon_study
            from wmlab.studies.runner import parse_study_arguments

            run_horizon_study(
                parse_study_arguments(
                    HorizonArguments,
                    name,
                    ["--out", str(out), *SMOKE, "--agent-overrides", '{"imagination_horizon": 3}'],
                    "",
                )
            )
    if name == "counterfactual":
        assert set(variants["plain"]["returns"]) == {"nominal", "observation_noise", "kicks"}
    if name == "occlusion":
        curve = variants["with-occlusion"]["belief"]["vector"]["posterior"]["mean"]
        assert len(curve) == 5 and curve[0] is not None and any(value is not None for value in curve[1:])
        assert set(variants) == {"plain", "with-occlusion"}


def test_study_command_lists_studies_and_names_close_matches(capsys):
    assert main(["study", "--help"]) == 0
    assert "horizon, counterfactual, occlusion" in capsys.readouterr().out
    assert main(["study", "horizn"]) == 2
    assert "Did you mean: horizon" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "horizon", "--help"])
    assert "--agent-overrides" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Studies sharing their run directories


def test_a_run_lock_excludes_a_second_holder_until_released(tmp_path):
    from wmlab.studies.runner import RunLock

    run_dir = tmp_path / "plain" / "seed0"
    with RunLock(run_dir) as first:
        assert first.held
        with RunLock(run_dir, wait=False) as second:
            assert not second.held
    with RunLock(run_dir, wait=False) as third:
        assert third.held


def test_studies_sharing_runs_dir_share_their_plain_dreamer_runs(tmp_path):
    from wmlab.studies.counterfactual import CounterfactualArguments
    from wmlab.studies.counterfactual import variants as counterfactual_variants
    from wmlab.studies.horizon import HorizonArguments
    from wmlab.studies.horizon import variants as horizon_variants
    from wmlab.studies.occlusion import OcclusionArguments
    from wmlab.studies.occlusion import variants as occlusion_variants
    from wmlab.studies.runner import Study, run_identity

    shared = ["--quick", "--runs-dir", str(tmp_path / "runs")]
    horizon = Study("horizon", HorizonArguments(out=tmp_path / "h", quick=True, runs_dir=tmp_path / "runs"), shared)
    counterfactual = Study(
        "counterfactual", CounterfactualArguments(out=tmp_path / "c", quick=True, runs_dir=tmp_path / "runs"), shared
    )
    occlusion_arguments = OcclusionArguments(out=tmp_path / "o", quick=True, runs_dir=tmp_path / "runs")
    occlusion = Study("occlusion", occlusion_arguments, shared)
    plains = [
        (study, next(v for v in found if v.name == "plain"))
        for study, found in [
            (horizon, horizon_variants(HorizonArguments(out=tmp_path))),
            (counterfactual, counterfactual_variants(CounterfactualArguments(out=tmp_path))),
            (occlusion, occlusion_variants(occlusion, occlusion_arguments)),
        ]
    ]
    assert len({study.run_dir(variant, 1) for study, variant in plains}) == 1
    identities = [run_identity(study.spec(variant, 1).to_json()) for study, variant in plains]
    assert identities[0] == identities[1] == identities[2]
    # Without --runs-dir each study keeps its own runs.
    alone = Study("horizon", HorizonArguments(out=tmp_path / "h", quick=True), ["--quick"])
    assert alone.run_dir(plains[0][1], 1) == tmp_path / "h" / "runs" / "plain" / "seed1"


def test_a_run_another_process_holds_is_trained_last_and_waited_for(tmp_path, monkeypatch):
    import threading
    import time

    from wmlab.studies import runner
    from wmlab.studies.horizon import HorizonArguments
    from wmlab.studies.horizon import variants as horizon_variants

    arguments = HorizonArguments(out=tmp_path, quick=True, seeds=2)
    study = runner.Study("horizon", arguments, ["--quick"])
    found = horizon_variants(arguments)
    order = []
    monkeypatch.setattr(
        runner,
        "train_or_reuse",
        lambda spec, run_dir, force=False: (
            order.append(str(run_dir.relative_to(tmp_path / "runs"))) or {"env_steps": 1}
        ),
    )
    results = {}
    with runner.RunLock(study.run_dir(found[0], 0)):
        worker = threading.Thread(target=lambda: results.update(study.train_all(found)))
        worker.start()
        deadline = time.monotonic() + 30
        while len(order) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert order == ["horizon-c0.9/seed0", "plain/seed1", "horizon-c0.9/seed1"]  # not waiting idle
    worker.join(timeout=30)
    assert order[-1] == "plain/seed0"
    assert [run.seed for run in results["plain"]] == [0, 1]


def test_the_core_update_runs_the_hooks_a_study_attaches():
    """A hook appended to `DreamerAgent.hooks` sees the starts and the targets of every update."""
    seen = []

    class Recorder(CounterfactualStarts):
        def starts(self, model, starts, generator):
            seen.append(("starts", starts["deter"].shape[0]))
            return starts

        def targets(self, returns, values):
            seen.append(("targets", tuple(returns.shape)))
            return returns

    config = tiny(DreamerConfig())
    agent = DreamerAgent(config, VECTORS, BOX, seed=0)
    agent.hooks.append(Recorder(0.0))
    agent.update(random_batch(VECTORS, BOX, B=3, T=5))
    assert seen == [("starts", 15), ("targets", (15, config.imagination_horizon))]
