"""Measurements of the diffusion world model (issue 27): generation speed and quality, and
GameNGen's context-noise ablation in small.

    # frames per second of generation at 1, 3, 10 denoising steps, PSNR at step 10 of each
    python benchmarks/diffusion_generation.py speed RUN_DIR --out speed.json

    # real time: the current code against a baseline commit's, alternating in one process, on a
    # denoiser trained here for --minutes on random two-rooms episodes (64 x 64)
    python benchmarks/diffusion_generation.py realtime --baseline 12a29dc --minutes 8 --out realtime.json

    # DIAMOND's denoising-steps ablation in small: a fresh actor-critic trained in the imagination
    # of RUN_DIR's world model with 1, 3, 10 denoising steps; its return inside and outside the model
    python benchmarks/diffusion_generation.py steps-ablation RUN_DIR --updates 150 --out ablation.json

    # UniSim in small: does the instruction-conditioned model (logs/unisim_cmd.sh trains one) move
    # the agent as told? Agreement of the probed move with the instruction at guidance 0, 1, 3
    python benchmarks/diffusion_generation.py unisim RUN_DIR --out unisim.json

    # do the UniSim simulator's predicted rewards follow its own frames? Its expected reward sign
    # under each instruction against two-rooms' dense reward read from the generated frames, and the
    # share of generated moves that pass through the wall outside the door
    python benchmarks/diffusion_generation.py imagined-rewards RUN_DIR --out rewards.json

    # does an offline (UniSim) run's reward / end model see the rewards and ends of its episodes?
    # calibrated probability at the steps that have one against the others, and the rank AUC
    python benchmarks/diffusion_generation.py reward-events RUN_DIR [--dataset DIR] --out events.json

    # GameNGen's figure in small: the denoiser trained on RUN_DIR's replay with and without
    # context-noise augmentation, PSNR of autoregressive generation under recorded actions
    python benchmarks/diffusion_generation.py context-noise RUN_DIR --minutes 10 --out noise.json

Both read a run of `wmlab train --algo diamond...` (its replay and, for speed, its checkpoint).
Frames per second: one sequence (B = 1), the world model's `imagine` alone, timed after one
warm-up frame, with torch's threads as set (1 here): frames only (denoiser and sampler, what
`wmlab generate` runs) and with the reward / end model (what imagination for the agent runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wmlab.core.seeding import seeded
from wmlab.core.types import Batch
from wmlab.data.captions import MOVES
from wmlab.eval.suites import episode_windows, replay_episodes
from wmlab.eval.world_model_metrics import psnr

PSNR_STEPS = (1, 5, 10, 20, 50)


def psnr_per_step(
    model, batch: Batch, context: int, steps: int, denoising_steps: int | None = None, seed: int = 0
) -> list[float]:
    """Filter `context` real steps of each window, generate `steps` frames with the recorded
    actions, and return the mean PSNR (dB, frames in [0, 1]) at each generated step."""
    head = {"image": batch.obs["image"][:, :context]}
    with torch.no_grad():
        _, state = model.observe(
            head, batch.action[:, :context], batch.is_first[:, :context], model.initial(len(batch.reward))
        )
        torch.manual_seed(seed)
        options = {} if denoising_steps is None else {"denoising_steps": denoising_steps}
        trajectory = model.imagine(state, torch.as_tensor(batch.action[:, context : context + steps]), steps, **options)
    real = torch.as_tensor(batch.obs["image"][:, context : context + steps]).float() / 255
    return psnr(real, trajectory.observations["image"].float(), leading=2).mean(0).tolist()


def held_out_windows(episodes, length: int, count: int, seed: int) -> Batch:
    return episode_windows(episodes, count, length, seed=seed)


def speed(arguments) -> dict:
    from wmlab.eval.suites import world_model_of
    from wmlab.runs.directory import load_trained_agent

    torch.set_num_threads(arguments.threads)
    _, agent = load_trained_agent(arguments.run_dir)
    model = world_model_of(agent).eval()
    episodes = [
        episode
        for episode in replay_episodes(arguments.run_dir)
        if len(episode["reward"]) >= model.context + arguments.frames
    ]
    rows = []
    one = held_out_windows(episodes, model.context + arguments.frames, 1, arguments.seed)
    quality = held_out_windows(episodes, model.context + 10, arguments.sequences, arguments.seed + 1)
    for steps in arguments.denoising_steps:
        head = {"image": one.obs["image"][:, : model.context]}
        with torch.no_grad():
            _, state = model.observe(
                head, one.action[:, : model.context], one.is_first[:, : model.context], model.initial(1)
            )
            actions = torch.as_tensor(one.action[:, model.context :])
            model.imagine(state, actions[:, :1], 1, denoising_steps=steps)
            rates = {}
            for predict_rewards in (False, True):
                begin = time.perf_counter()
                model.imagine(state, actions, arguments.frames, denoising_steps=steps, predict_rewards=predict_rewards)
                rates[predict_rewards] = arguments.frames / (time.perf_counter() - begin)
        curve = psnr_per_step(model, quality, model.context, 10, steps, arguments.seed)
        rows.append(
            {
                "denoising_steps": steps,
                "frames_per_second": rates[False],
                "frames_per_second_with_rewards": rates[True],
                "psnr_step_1": curve[0],
                "psnr_step_10": curve[9],
            }
        )
        print(json.dumps(rows[-1]))
    # The trivial predictor, for scale: the last real context frame repeated.
    real = torch.as_tensor(quality.obs["image"][:, model.context : model.context + 10]).float() / 255
    last = torch.as_tensor(quality.obs["image"][:, model.context - 1 : model.context]).float().expand_as(real) / 255
    repeat = psnr(real, last, leading=2).mean(0).tolist()
    baseline = {"psnr_step_1": repeat[0], "psnr_step_10": repeat[9]}
    print(json.dumps({"repeat_last_frame": baseline}))
    return {
        "run": str(arguments.run_dir),
        "frames": arguments.frames,
        "sequences": arguments.sequences,
        "threads": arguments.threads,
        "rows": rows,
        "repeat_last_frame": baseline,
    }


def train_denoiser(config, observation_space, action_space, episodes, minutes: float, batch_size: int, seed: int):
    """The diffusion model trained on replay windows for a wall-clock budget (denoiser and reward
    model, DIAMOND's optimiser settings at the CPU preset's learning rate)."""
    from wmlab.models.diffusion import DiffusionWorldModel

    torch.manual_seed(seed)
    model = DiffusionWorldModel(config, observation_space, action_space)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=3e-4, weight_decay=1e-2, eps=1e-8)
    rng = np.random.default_rng(seed)
    deadline = time.perf_counter() + 60 * minutes
    updates = 0
    while time.perf_counter() < deadline:
        batch = episode_windows(episodes, batch_size, config.context + 1, seed=int(rng.integers(1 << 31)))
        frames = model.to_model_frames(batch.obs["image"], ("B", "T"), {})
        actions = torch.as_tensor(batch.action).long()
        model.train()
        loss, _ = model.denoising_loss(frames, actions, torch.as_tensor(batch.is_first).bool(), None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.denoiser.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = 3e-4 * min(1.0, (updates + 1) / 100)
        optimizer.step()
        updates += 1
    return model.eval(), updates


class UniformAgent:
    """Uniform random actions (collects the episodes that `realtime` trains and measures on)."""

    def __init__(self, space, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def act(self, obs, state, explore: bool = False):
        return np.array([self.rng.integers(self.space.n)]), state


def baseline_model_class(commit: str):
    """DiffusionWorldModel as it was at `commit`: its models/diffusion.py and nn/unet.py read from
    git and imported under other names (the rest of wmlab is shared), so both versions run side
    by side in one process on the same weights."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(prefix="wmlab_baseline_"))
    for name, path in (("baseline_unet", "wmlab/nn/unet.py"), ("baseline_diffusion", "wmlab/models/diffusion.py")):
        source = subprocess.run(
            ["git", "show", f"{commit}:{path}"], cwd=root, check=True, capture_output=True, text=True
        ).stdout
        source = source.replace("from wmlab.nn.unet import", "from baseline_unet import")
        (folder / f"{name}.py").write_text(source)
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["baseline_diffusion"].DiffusionWorldModel


def frames_per_second(model, state, actions, frames: int, steps: int, predict_rewards: bool) -> float:
    begin = time.perf_counter()
    model.imagine(state, actions[:, :frames], frames, denoising_steps=steps, predict_rewards=predict_rewards)
    return frames / (time.perf_counter() - begin)


def realtime(arguments) -> dict:
    """Train a denoiser (the CPU preset, current code) for `minutes` on random 64 x 64 two-rooms
    episodes, then measure generation (B = 1) with the current and the baseline code alternating,
    `rounds` times per denoising-step count, and PSNR at steps 1 and 10 on held-out windows."""
    import statistics

    from wmlab.envs.adapter import make_env
    from wmlab.eval.suites import collect_episodes
    from wmlab.models.diffusion import DIFFUSION_CPU

    torch.set_num_threads(arguments.threads)
    env_kwargs = {"reward": "dense", "max_episode_steps": 100}
    env = make_env("two-rooms-discrete", **env_kwargs)
    agent = UniformAgent(env.action_space, arguments.seed)
    training = collect_episodes(agent, "two-rooms-discrete", env_kwargs, arguments.episodes, arguments.seed, 100, True)
    held_out = collect_episodes(agent, "two-rooms-discrete", env_kwargs, 8, arguments.seed + 100_000, 100, True)
    config = DIFFUSION_CPU
    model, updates = train_denoiser(
        config,
        env.observation_space,
        env.action_space,
        training,
        arguments.minutes,
        arguments.batch_size,
        arguments.seed,
    )
    baseline = baseline_model_class(arguments.baseline)(config, env.observation_space, env.action_space).eval()
    baseline.load_state_dict(model.state_dict())
    K = config.context
    one = held_out_windows(held_out, K + arguments.frames, 1, arguments.seed)
    quality = held_out_windows(held_out, K + 10, arguments.sequences, arguments.seed + 1)
    rows = []
    for steps in arguments.denoising_steps:
        rates: dict[str, list[float]] = {
            name: [] for name in ("current", "baseline", "current_rewards", "baseline_rewards")
        }
        with torch.no_grad():
            states = {}
            for name, network in (("current", model), ("baseline", baseline)):
                _, states[name] = network.observe(
                    {"image": one.obs["image"][:, :K]}, one.action[:, :K], one.is_first[:, :K], network.initial(1)
                )
            actions = torch.as_tensor(one.action[:, K:])
            for name, network in (("current", model), ("baseline", baseline)):
                frames_per_second(network, states[name], actions, 2, steps, True)  # warm-up
            for _ in range(arguments.rounds):
                for name, network in (("current", model), ("baseline", baseline)):
                    rates[name].append(
                        frames_per_second(network, states[name], actions, arguments.frames, steps, False)
                    )
                    rates[name + "_rewards"].append(
                        frames_per_second(network, states[name], actions, arguments.frames, steps, True)
                    )
        medians = {name: statistics.median(values) for name, values in rates.items()}
        curve = psnr_per_step(model, quality, K, 10, steps, arguments.seed)
        curve_baseline = psnr_per_step(baseline, quality, K, 10, steps, arguments.seed)
        rows.append(
            {
                "denoising_steps": steps,
                "frames_per_second": medians["current"],
                "frames_per_second_baseline": medians["baseline"],
                "ratio": medians["current"] / medians["baseline"],
                "per_round_ratios": [a / b for a, b in zip(rates["current"], rates["baseline"])],
                "frames_per_second_with_rewards": medians["current_rewards"],
                "frames_per_second_with_rewards_baseline": medians["baseline_rewards"],
                "psnr_step_1": curve[0],
                "psnr_step_10": curve[9],
                "psnr_step_10_baseline_code": curve_baseline[9],
                "rates": rates,
            }
        )
        print(json.dumps({key: value for key, value in rows[-1].items() if key != "rates"}), flush=True)
    real = torch.as_tensor(quality.obs["image"][:, K : K + 10]).float() / 255
    last = torch.as_tensor(quality.obs["image"][:, K - 1 : K]).float().expand_as(real) / 255
    repeat = psnr(real, last, leading=2).mean(0).tolist()
    env.close()
    return {
        "baseline_commit": arguments.baseline,
        "updates": updates,
        "minutes": arguments.minutes,
        "training_episodes": arguments.episodes,
        "frames": arguments.frames,
        "rounds": arguments.rounds,
        "sequences": arguments.sequences,
        "threads": arguments.threads,
        "rows": rows,
        "repeat_last_frame": {"psnr_step_1": repeat[0], "psnr_step_10": repeat[9]},
    }


def steps_ablation(arguments) -> dict:
    """For each denoising-step count k: a fresh actor-critic (the run's seed) trained for `updates`
    updates only in the imagination of RUN_DIR's trained world model with k steps (replay batches
    of the run), then its return inside the model (imagined with k steps, sampled and greedy
    actions) and outside (episodes in the real environment, the agent's evaluation mode).

    `--keep-actor-critic`: start each k from the run's own trained actor-critic instead (a copy
    each time); with `--updates 0` the rows compare the trained agent's return inside the model at
    each k against one measurement of its return outside."""
    from wmlab.agents.imagination.learner import ImaginationLearner
    from wmlab.eval.returns import evaluate_agent
    from wmlab.eval.suites import world_model_of
    from wmlab.runs.directory import load_trained_agent

    torch.set_num_threads(arguments.threads)
    spec, agent = load_trained_agent(arguments.run_dir)
    model = world_model_of(agent).eval()
    episodes = replay_episodes(arguments.run_dir)
    length = agent.learner.config.burn_in  # the learner reads only its burn-in from each window
    probe = episode_windows(episodes, arguments.probe, agent.learner.config.burn_in, seed=arguments.seed + 7)
    trained = copy.deepcopy(agent.learner)
    rows = []
    outside_once = None  # the trained agent's real return, when no k changes it
    for steps in arguments.denoising_steps:
        generator = torch.Generator().manual_seed(arguments.seed)
        if arguments.keep_actor_critic:
            agent.learner = copy.deepcopy(trained)
            agent.learner.generator = generator
        else:
            with seeded(arguments.seed):
                H, W = model.image_size
                agent.learner = ImaginationLearner(
                    agent.learner.config, (H, W, model.image_channels), model.action_size, agent.device, generator
                )
        agent.generator = generator
        rng = np.random.default_rng(arguments.seed)
        begin = time.perf_counter()
        trace = []
        for update in range(arguments.updates):
            batch = episode_windows(episodes, spec.train.batch_size, length, seed=int(rng.integers(1 << 31)))
            metrics = agent.learner.update(model, batch, denoising_steps=steps)
            if update % 25 == 0 or update == arguments.updates - 1:
                trace.append({"update": update, "ac/return": metrics["ac/return"], "ac/entropy": metrics["ac/entropy"]})
        seconds = time.perf_counter() - begin
        draws = torch.Generator().manual_seed(arguments.seed + 11)
        inside = {
            f"inside_{mode}": agent.learner.imagined_return(
                model, probe, policy, draws, denoising_steps=steps, generator=draws
            )["return"]
            for mode, policy in (("sampled", "sample"), ("greedy", "greedy"))
        }
        outside = outside_once or evaluate_agent(
            agent,
            spec.env,
            arguments.episodes,
            10_000_000 + arguments.seed,
            spec.evaluation_env_kwargs,
            max_steps=arguments.max_steps,
        )
        if arguments.keep_actor_critic and arguments.updates == 0:
            outside_once = outside
        row = {
            "denoising_steps": steps,
            "updates": arguments.updates,
            "actor_critic": "the run's, continued" if arguments.keep_actor_critic else "fresh",
            "seconds": seconds,
            **inside,
            "outside_return": outside["eval/return"],
            "outside_return_std": outside["eval/return_std"],
            "outside_episodes": arguments.episodes,
            "trace": trace,
        }
        rows.append(row)
        print(json.dumps({key: value for key, value in row.items() if key != "trace"}), flush=True)
    return {
        "run": str(arguments.run_dir),
        "env": spec.env,
        "env_kwargs": spec.env_kwargs,
        "eval_env_kwargs": spec.eval_env_kwargs,
        "seed": arguments.seed,
        "rows": rows,
    }


def held_out_instruction_starts(arguments, env_kwargs: dict | None = None):
    """The UniSim run's model, the text encoder's embeddings of MOVES, `held_out` context windows of
    captioned two-rooms episodes it never saw (seeds 100,000 + i) and its state after them."""
    import tempfile

    from wmlab.data.captions import record_captioned_two_rooms
    from wmlab.data.dataset import load_dataset
    from wmlab.data.instructions import write_instruction_dataset
    from wmlab.nn.text import load_text_encoder
    from wmlab.runs.directory import load_trained_model

    torch.set_num_threads(arguments.threads)
    _, model = load_trained_model(arguments.run_dir)
    model.eval()
    encoder = load_text_encoder()
    folder = Path(tempfile.mkdtemp(prefix="unisim_held_out_"))
    record_captioned_two_rooms(folder / "captioned", arguments.held_out, seed=100_000, env_kwargs=env_kwargs)
    write_instruction_dataset(folder / "captioned", folder / "instructions", encoder)
    episodes = list(load_dataset(folder / "instructions").episodes())
    starts = held_out_windows(episodes, model.context, arguments.held_out, arguments.seed)
    with torch.no_grad():
        _, state = model.observe(
            {"image": starts.obs["image"], "condition": starts.obs["condition"]},
            starts.action,
            starts.is_first,
            model.initial(arguments.held_out),
        )
        table = torch.as_tensor(encoder.encode(list(MOVES))).float()
    return model, table, starts, state


def imagine_instruction(model, state, table, index: int, arguments, guidance: float, predict_rewards: bool):
    """`steps` frames imagined from every start under MOVES[index] (seeded as `unisim` does)."""
    torch.manual_seed(arguments.seed)
    condition = table[index : index + 1].expand(arguments.held_out, -1)
    with torch.no_grad():
        return model.imagine(
            state,
            torch.zeros(arguments.held_out, arguments.steps, dtype=torch.long),
            condition=condition,
            guidance=guidance,
            predict_rewards=predict_rewards,
        )


def unisim(arguments) -> dict:
    """Held-out captioned two-rooms starts (seeds 100,000 + i), `steps` frames generated under each
    movement instruction at each guidance scale; the agent's move between consecutive frames is
    read by the GAIA pipeline's probe (agent-coloured centroid); agreement = probed move == instruction."""
    from wmlab.pipelines.gaia import probe_moves

    model, table, starts, state = held_out_instruction_starts(arguments)
    real_moves = probe_moves(starts.obs["image"])
    rows = []
    for guidance in arguments.guidance:
        agreement = {}
        missing = []
        for index, text in enumerate(MOVES):
            trajectory = imagine_instruction(model, state, table, index, arguments, guidance, predict_rewards=False)
            last = torch.as_tensor(starts.obs["image"][:, -1:]).float() / 255
            frames = torch.cat([last, trajectory.observations["image"].float()], 1).numpy()
            moves = probe_moves(frames)
            agreement[text] = float((moves == text).mean())
            missing.append(float((moves == "no agent").mean()))
        rows.append(
            {
                "guidance": guidance,
                "agreement": float(np.mean(list(agreement.values()))),
                "per_instruction": agreement,
                "no_agent_share": float(np.mean(missing)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    chance = {text: float((real_moves == text).mean()) for text in MOVES}
    return {
        "run": str(arguments.run_dir),
        "held_out": arguments.held_out,
        "steps": arguments.steps,
        "rows": rows,
        "real_move_shares_in_context": chance,
    }


def frame_geometry(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-rooms read from frames (B, L, H, W, 3) in [0, 1] or uint8: the agent's centre (B, L, 2)
    and the goal's (B, 2) found by colour (gaia.agent_centre), and the door's centre height (B,)
    from the gap in the wall's middle column of the first frame, in arena units (NaN where a frame
    shows no agent, no goal or no gap)."""
    from wmlab.envs.two_rooms import GOAL_RGB, MIDDLE_X, WALL_RGB
    from wmlab.pipelines.gaia import agent_centre

    frames = np.asarray(frames)
    if np.issubdtype(frames.dtype, np.integer):
        frames = frames.astype(np.float32) / 255.0
    agents = agent_centre(frames)  # (B, L, 2)
    goals = agent_centre(frames[:, 0], GOAL_RGB)  # (B, 2)
    size = frames.shape[-2]
    column = frames[:, 0, :, int(MIDDLE_X * size)]  # (B, H, 3)
    gap = np.abs(column - np.array(WALL_RGB, np.float32) / 255.0).max(-1) >= 0.2  # (B, H)
    doors = np.array([1 - (np.flatnonzero(row).mean() + 0.5) / size if row.any() else np.nan for row in gap])
    return agents, goals, doors


def path_decreases(frames: np.ndarray) -> np.ndarray:
    """Two-rooms' dense reward read from frames (B, L, H, W, 3): the decrease of the path length
    from the agent to the goal between consecutive frames (B, L - 1) (frame_geometry); NaN where a
    frame shows no agent or the first no goal or door."""
    from wmlab.envs.two_rooms import TwoRoomsGeometry, path_length

    agents, goals, doors = frame_geometry(frames)
    geometry = TwoRoomsGeometry()
    decreases = np.full(agents.shape[:2], np.nan)
    for b in range(len(agents)):
        if np.isnan(doors[b]) or np.isnan(goals[b]).any():
            continue
        for t in range(agents.shape[1]):
            if not np.isnan(agents[b, t]).any():
                decreases[b, t] = path_length(agents[b, t], goals[b], doors[b], geometry)
    return decreases[:, :-1] - decreases[:, 1:]


def wall_crossings(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moves between consecutive frames (B, L, H, W, 3) that take the agent's centre from one room
    to the other outside the door: where the straight line between the two centres meets the
    wall's middle, its height lies further than half the door's height from the door's centre,
    so the agent would have passed through the wall itself. -> (crossed (B, L - 1), read (B, L - 1):
    both frames show the agent and the first the door)."""
    from wmlab.envs.two_rooms import MIDDLE_X, TwoRoomsGeometry

    agents, _, doors = frame_geometry(frames)
    before, after = agents[:, :-1], agents[:, 1:]  # (B, L - 1, 2)
    read = ~np.isnan(before).any(-1) & ~np.isnan(after).any(-1) & ~np.isnan(doors)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sides = (before[..., 0] < MIDDLE_X) != (after[..., 0] < MIDDLE_X)
        fraction = (MIDDLE_X - before[..., 0]) / (after[..., 0] - before[..., 0])
        height = before[..., 1] + fraction * (after[..., 1] - before[..., 1])
        outside = np.abs(height - doors[:, None]) > TwoRoomsGeometry().door_height / 2
    return read & sides & outside, read


def crossing_share(frames: np.ndarray, counted: np.ndarray | None = None) -> float:
    """The share of the moves read in frames (B, L, H, W, 3) that pass through the wall
    (wall_crossings), of those where `counted` (B, L - 1) is true (default: all)."""
    crossed, read = wall_crossings(frames)
    if counted is not None:
        read = read & counted
    return float(crossed[read].mean()) if read.any() else float("nan")


def imagined_rewards(arguments) -> dict:
    """Do the simulator's rewards follow its own frames? From held-out starts recorded with the
    dense reward, `steps` frames imagined under each instruction with the reward model on: its
    expected reward sign at each step against the sign of two-rooms' dense reward read from the
    frames (path_decreases; |decrease| under `--still` counts as 0). The same reading on the real
    context windows, against their recorded reward, checks the reading itself."""
    model, table, starts, state = held_out_instruction_starts(arguments, env_kwargs={"reward": "dense"})

    def signs(decrease: np.ndarray) -> np.ndarray:
        return np.where(np.abs(decrease) < arguments.still, 0.0, np.sign(decrease))

    real = path_decreases(starts.obs["image"])
    recorded = np.asarray(starts.reward, dtype=np.float64)[:, 1:]
    after_reset = np.asarray(starts.is_first)[:, 1:].astype(bool)
    seen = ~np.isnan(real) & ~after_reset
    result = {
        "run": str(arguments.run_dir),
        "held_out": arguments.held_out,
        "steps": arguments.steps,
        "guidance": arguments.guidance[0],
        "still": arguments.still,
        "reading_check": {
            "steps": int(seen.sum()),
            "correlation_with_recorded_reward": float(np.corrcoef(real[seen], recorded[seen])[0, 1]),
            "sign_agreement": float((signs(real[seen]) == np.sign(recorded[seen])).mean()),
            "wall_crossing_share": crossing_share(starts.obs["image"], ~after_reset),
        },
    }
    print("reading check", json.dumps(result["reading_check"]), flush=True)
    predicted_all, read_all, rows = [], [], {}
    for index, text in enumerate(MOVES):
        trajectory = imagine_instruction(model, state, table, index, arguments, arguments.guidance[0], True)
        last = torch.as_tensor(starts.obs["image"][:, -1:]).float() / 255
        frames = torch.cat([last, trajectory.observations["image"].float()], 1).numpy()
        read = path_decreases(frames)
        predicted = trajectory.rewards.numpy().astype(np.float64)
        kept = ~np.isnan(read)
        predicted_all.append(predicted[kept])
        read_all.append(signs(read[kept]))
        rows[text] = {
            "steps_read": int(kept.sum()),
            "mean_predicted_reward": float(predicted[kept].mean()) if kept.any() else float("nan"),
            "mean_sign_read_from_frames": float(signs(read[kept]).mean()) if kept.any() else float("nan"),
            "mean_decrease_read_from_frames": float(read[kept].mean()) if kept.any() else float("nan"),
            "wall_crossing_share": crossing_share(frames),
        }
        print(text, json.dumps(rows[text]), flush=True)
    predicted, read = np.concatenate(predicted_all), np.concatenate(read_all)
    result["per_instruction"] = rows
    result["correlation"] = float(np.corrcoef(predicted, read)[0, 1]) if len(read) > 1 else float("nan")
    moving = read != 0
    result["sign_agreement_where_the_frames_move"] = float((np.sign(predicted[moving]) == read[moving]).mean())
    result["share_of_steps_the_frames_move"] = float(moving.mean())
    print(json.dumps({k: result[k] for k in ("correlation", "sign_agreement_where_the_frames_move")}), flush=True)
    return result


def curve(arguments) -> dict:
    """The greedy evaluation return of runs (RUN_DIR/metrics.jsonl) against environment steps,
    beside uniform random actions evaluated by the same protocol (evaluate_agent, 200 episodes,
    seeds 10,000,000 + i); one figure."""
    from wmlab.eval.returns import evaluate_agent
    from wmlab.runs.directory import load_run_spec

    results = {"runs": [], "random": {}}
    for run_dir in arguments.run_dirs:
        spec = load_run_spec(run_dir)
        points = []
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "eval/return" in row:
                points.append([row["step"], row["time"], row["eval/return"], row["eval/return_std"]])
        played = spec.evaluation_env_kwargs
        key = f"{spec.env} {json.dumps(played, sort_keys=True)}"
        if key not in results["random"]:
            from wmlab.envs.adapter import make_env

            env = make_env(spec.env, **played)
            metrics = evaluate_agent(UniformAgent(env.action_space, 0), spec.env, 200, 10_000_000, played)
            env.close()
            results["random"][key] = {name: float(value) for name, value in metrics.items()}
        results["runs"].append(
            {
                "run": str(run_dir),
                "env": key,
                "algorithm": spec.algorithm,
                "eval_episodes": spec.train.eval_episodes,
                "points": points,
            }
        )
    if arguments.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        axis = plt.subplots(figsize=(5.5, 3.4))[1]
        for index, run in enumerate(results["runs"]):
            points = np.array(run["points"])
            axis.errorbar(
                points[:, 0],
                points[:, 2],
                yerr=points[:, 3] / np.sqrt(run["eval_episodes"]),
                color=f"C{index}",
                marker="o",
                ms=3,
                capsize=2,
                label=f"{run['algorithm']}: {Path(run['run']).name} ({run['eval_episodes']} episodes a point)",
            )
            random = results["random"][run["env"]]
            axis.axhline(random["eval/return"], color=f"C{index}", ls="--", lw=1, label="uniform random (200 episodes)")
        axis.set_xlabel("environment steps")
        axis.set_ylabel("greedy return (mean, +- s.e.)")
        axis.legend(fontsize=7)
        arguments.figure.parent.mkdir(parents=True, exist_ok=True)
        axis.figure.tight_layout()
        axis.figure.savefig(arguments.figure, dpi=100)
    for run in results["runs"]:
        print(run["run"], [[round(value, 3) for value in point] for point in run["points"]])
    print(json.dumps(results["random"]))
    return results


def context_noise(arguments) -> dict:
    from wmlab.envs.adapter import make_env
    from wmlab.models.diffusion import DIFFUSION_CPU
    from wmlab.runs.directory import load_run_spec

    torch.set_num_threads(arguments.threads)
    spec = load_run_spec(arguments.run_dir)
    env = make_env(spec.env, **spec.env_kwargs)
    episodes = replay_episodes(arguments.run_dir)
    longest = max(PSNR_STEPS)
    # The last episodes are held out for the measurement; the others train.
    held_out = episodes[-arguments.held_out :]
    training = episodes[: -arguments.held_out]
    windows = held_out_windows(held_out, DIFFUSION_CPU.context + longest, arguments.sequences, arguments.seed)
    results = {
        "run": str(arguments.run_dir),
        "minutes_each": arguments.minutes,
        "training_episodes": len(training),
        "held_out_episodes": len(held_out),
        "seeds": arguments.seeds,
        "rows": [],
    }
    for seed in range(arguments.seeds):
        for augmented in (False, True):
            config = replace(DIFFUSION_CPU, context_noise=augmented)
            model, updates = train_denoiser(
                config, env.observation_space, env.action_space, training, arguments.minutes, arguments.batch_size, seed
            )
            curve = psnr_per_step(model, windows, config.context, longest, None, arguments.seed)
            row = {
                "seed": seed,
                "context_noise": augmented,
                "updates": updates,
                "psnr": {str(step): curve[step - 1] for step in PSNR_STEPS},
                "psnr_per_step": curve,
            }
            results["rows"].append(row)
            print(json.dumps({key: value for key, value in row.items() if key != "psnr_per_step"}))
    env.close()
    if arguments.figure:
        figure(results, arguments.figure)
    return results


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = plt.subplots(figsize=(5, 3.4))[1]
    for row in results["rows"]:
        steps = np.arange(1, len(row["psnr_per_step"]) + 1)
        axis.plot(
            steps,
            row["psnr_per_step"],
            color="C1" if row["context_noise"] else "C0",
            alpha=0.8,
            label=f"{'with' if row['context_noise'] else 'without'} context noise (seed {row['seed']})",
        )
    axis.set_xlabel("autoregressive step")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title("Context-noise augmentation (GameNGen Fig. in small)")
    axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    axis.figure.tight_layout()
    axis.figure.savefig(path, dpi=100)


def rank_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    positive, negative = score[label], score[~label]
    if not len(positive) or not len(negative):
        return float("nan")
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (len(positive) * len(negative)))


def reward_events(arguments) -> dict:
    """Over every episode of the run's dataset (or --dataset): the reward / end model run along
    each whole episode (as `observe` filters), its calibrated probability of a positive reward
    (of an end) at the steps that have one and at the others, the rank AUC between them, and how
    often it says more than one half. AUC 0.5: the model does not see the events."""
    from wmlab.data.dataset import load_dataset
    from wmlab.runs.directory import load_trained_model

    torch.set_num_threads(arguments.threads)
    spec, model = load_trained_model(arguments.run_dir)
    model.eval()
    dataset = load_dataset(arguments.dataset or spec.dataset)
    scores = {"reward": ([], []), "end": ([], [])}
    with torch.no_grad():
        for episode in dataset.episodes():
            sizes: dict[str, int] = {}
            frames = model.to_model_frames(episode[model.key][None], ("B", "T"), sizes)
            actions = model.encode_actions(episode["action"][None], ("B", "T"), sizes)
            is_first = torch.as_tensor(episode["is_first"][None], device=model.device)
            reward_logits, end_logits, mask = model.reward_end_logits(frames, actions, is_first)
            reward_logits, end_logits = model.calibrated(reward_logits[mask], end_logits[mask])
            kept = mask[0].cpu().numpy()
            scores["reward"][0].append(reward_logits.softmax(-1)[:, 2].cpu().numpy())
            scores["reward"][1].append(episode["reward"][1:][kept] > 0)
            scores["end"][0].append(end_logits.softmax(-1)[:, 1].cpu().numpy())
            scores["end"][1].append(episode["is_terminal"][1:][kept].astype(bool))
    result = {"run": str(arguments.run_dir), "dataset": str(arguments.dataset or spec.dataset)}
    for name, (probabilities, labels) in scores.items():
        p, y = np.concatenate(probabilities), np.concatenate(labels)
        result[name] = {
            "steps": int(len(y)),
            "events": int(y.sum()),
            "mean_probability_at_events": float(p[y].mean()) if y.any() else float("nan"),
            "mean_probability_elsewhere": float(p[~y].mean()) if (~y).any() else float("nan"),
            "auc": rank_auc(p, y),
            "said_above_half": int((p > 0.5).sum()),
            "events_said_above_half": int((p[y] > 0.5).sum()),
        }
        print(name, json.dumps(result[name]), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fast = commands.add_parser("speed")
    fast.add_argument("run_dir", type=Path)
    fast.add_argument("--denoising-steps", type=int, nargs="+", default=[1, 3, 10])
    fast.add_argument("--frames", type=int, default=50)
    fast.add_argument("--sequences", type=int, default=16)
    clock = commands.add_parser("realtime")
    clock.add_argument("--baseline", default="12a29dc", help="git commit of the code to compare against")
    clock.add_argument("--minutes", type=float, default=8.0)
    clock.add_argument("--episodes", type=int, default=40)
    clock.add_argument("--batch-size", type=int, default=16)
    clock.add_argument("--denoising-steps", type=int, nargs="+", default=[1, 3, 10])
    clock.add_argument("--frames", type=int, default=50)
    clock.add_argument("--rounds", type=int, default=5)
    clock.add_argument("--sequences", type=int, default=16)
    ablation = commands.add_parser("steps-ablation")
    ablation.add_argument("run_dir", type=Path)
    ablation.add_argument("--denoising-steps", type=int, nargs="+", default=[1, 3, 10])
    ablation.add_argument("--updates", type=int, default=150)
    ablation.add_argument("--episodes", type=int, default=50, help="real-environment episodes per row")
    ablation.add_argument("--max-steps", type=int, default=1000)
    ablation.add_argument("--probe", type=int, default=64, help="imagined rollouts for the return inside the model")
    ablation.add_argument(
        "--keep-actor-critic", action="store_true", help="start from the run's trained actor-critic, not a fresh one"
    )
    text = commands.add_parser("unisim")
    text.add_argument("run_dir", type=Path)
    text.add_argument("--held-out", type=int, default=16)
    text.add_argument("--steps", type=int, default=6)
    text.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    rewards = commands.add_parser("imagined-rewards")
    rewards.add_argument("run_dir", type=Path)
    rewards.add_argument("--held-out", type=int, default=32)
    rewards.add_argument("--steps", type=int, default=6)
    rewards.add_argument("--guidance", type=float, nargs=1, default=[1.0])
    rewards.add_argument("--still", type=float, default=0.01, help="|path decrease| below this reads as no move")
    events = commands.add_parser("reward-events")
    events.add_argument("run_dir", type=Path)
    events.add_argument("--dataset", type=Path, default=None, help="episodes to read (default: the run's dataset)")
    curves = commands.add_parser("curve")
    curves.add_argument("run_dirs", type=Path, nargs="+")
    curves.add_argument("--figure", type=Path, default=None)
    noise = commands.add_parser("context-noise")
    noise.add_argument("run_dir", type=Path)
    noise.add_argument("--minutes", type=float, default=10.0)
    noise.add_argument("--seeds", type=int, default=1)
    noise.add_argument("--batch-size", type=int, default=16)
    noise.add_argument("--held-out", type=int, default=3)
    noise.add_argument("--sequences", type=int, default=16)
    noise.add_argument("--figure", type=Path, default=None)
    for sub in (fast, clock, ablation, text, rewards, events, curves, noise):
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--threads", type=int, default=1)
        sub.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    commands_run = {
        "speed": speed,
        "realtime": realtime,
        "steps-ablation": steps_ablation,
        "unisim": unisim,
        "imagined-rewards": imagined_rewards,
        "reward-events": reward_events,
        "curve": curve,
        "context-noise": context_noise,
    }
    result = commands_run[arguments.command](arguments)
    import sys

    result["command"] = " ".join(["python benchmarks/diffusion_generation.py", *sys.argv[1:]])
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
