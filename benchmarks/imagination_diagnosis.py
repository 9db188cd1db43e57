"""Why agents trained in imagination (DIAMOND, IRIS) do not learn at a CPU budget: the parts
measured alone on recorded real data (issues 26 / 27).

    # the reward / end model alone on random-policy MinAtar Breakout: precision and recall of
    # nonzero rewards and of episode ends on held-out windows, by update
    python benchmarks/imagination_diagnosis.py reward-end --updates 600 --sparse-weight 10 --out re.json

    # imagined against real returns for the same actions: burn-in on real windows of the run's
    # replay, then the replay's own actions imagined, against what really followed
    python benchmarks/imagination_diagnosis.py imagined-vs-real RUN_DIR --windows 256 --out ivr.json

    # the denoiser alone on a run's replay: does it draw the small objects? lit pixels per channel
    # of one-step samples (teacher-forced context) against the real next frames, by update
    python benchmarks/imagination_diagnosis.py denoiser RUN_DIR --updates 300 --foreground 20 --out dn.json

    # a trained run's final policy in the real environment: greedy, sampled (the collection
    # policy: epsilon 0.01), sampled at each of --temperatures with epsilon 0 (IRIS's test
    # episodes: 0.5, DIAMOND's: 1) and uniform random, the same episode seeds for all
    python benchmarks/imagination_diagnosis.py evaluate RUN_DIR --episodes 100 --out eval.json

Data: a stream of uniform-random episodes (`--steps` steps, seed `--seed`), windows of
`--length` steps drawn from it as wmlab's replay draws them (across episode boundaries, marked
by is_first); held-out windows from a second stream (seed + 1000).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import is_dataclass, replace

import numpy as np
import torch

from wmlab.core.types import Batch


def record_stream(env_id: str, env_kwargs: dict, steps: int, seed: int) -> dict[str, np.ndarray]:
    """`steps` steps of uniform-random play as one stream of replay rows (obs, the action that led
    to it, the reward on arriving, is_first / is_terminal / is_last)."""
    from wmlab.envs.adapter import make_env

    env = make_env(env_id, **env_kwargs)
    env.action_space.seed(seed)
    rows: dict[str, list] = {key: [] for key in ("image", "action", "reward", "is_first", "is_terminal", "is_last")}

    def store(obs, action, reward, first, terminal, last):
        rows["image"].append(obs["image"] if isinstance(obs, dict) else obs)
        rows["action"].append(action)
        rows["reward"].append(reward)
        rows["is_first"].append(first)
        rows["is_terminal"].append(terminal)
        rows["is_last"].append(last)

    obs, _ = env.reset(seed=seed)
    store(obs, 0, 0.0, True, False, False)
    episode = 0
    while len(rows["reward"]) < steps:
        action = int(env.action_space.sample())
        obs, reward, terminated, truncated, _ = env.step(action)
        store(obs, action, float(reward), False, bool(terminated), bool(terminated or truncated))
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
            store(obs, 0, 0.0, True, False, False)
    return {
        "image": np.stack(rows["image"]).astype(np.uint8),
        "action": np.asarray(rows["action"], np.int64),
        "reward": np.asarray(rows["reward"], np.float32),
        "is_first": np.asarray(rows["is_first"], bool),
        "is_terminal": np.asarray(rows["is_terminal"], bool),
        "is_last": np.asarray(rows["is_last"], bool),
    }


def stream_windows(stream: dict[str, np.ndarray], count: int, length: int, rng: np.random.Generator) -> Batch:
    """`count` windows of `length` consecutive rows of the stream (as the replay samples them)."""
    starts = rng.integers(0, len(stream["reward"]) - length + 1, size=count)
    index = starts[:, None] + np.arange(length)
    return Batch(
        obs={"image": stream["image"][index]},
        action=stream["action"][index],
        reward=stream["reward"][index],
        is_first=stream["is_first"][index],
        is_last=stream["is_last"][index],
        is_terminal=stream["is_terminal"][index],
    )


def precision_recall(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    hits = float((predicted & actual).sum())
    return {
        "precision": hits / max(float(predicted.sum()), 1.0),
        "recall": hits / max(float(actual.sum()), 1.0),
        "positives": float(actual.sum()),
    }


@torch.no_grad()
def reward_end_scores(model, batch: Batch) -> dict[str, float]:
    """Precision / recall of nonzero reward signs and of ends (argmax of the heads) on `batch`."""
    frames = model.to_model_frames(batch.obs["image"], ("B", "T"), {})
    actions = torch.as_tensor(batch.action).long()
    is_first = torch.as_tensor(batch.is_first).bool()
    reward_logits, end_logits, mask = model.reward_end_logits(frames, actions, is_first)
    reward = torch.as_tensor(batch.reward)[:, 1:][mask]
    terminal = torch.as_tensor(batch.is_terminal)[:, 1:][mask]
    scores = {}
    for name, (rewards, ends) in {
        "": (reward_logits, end_logits),
        "calibrated_": model.calibrated(reward_logits, end_logits),
    }.items():
        predicted_sign = rewards[mask].argmax(-1) - 1
        predicted_end = ends[mask].argmax(-1) == 1
        for key, value in precision_recall(predicted_sign != 0, reward.sign() != 0).items():
            scores[f"{name}reward_{key}"] = value
        for key, value in precision_recall(predicted_end, terminal).items():
            scores[f"{name}end_{key}"] = value
    return scores


def reward_end(arguments) -> dict:
    from wmlab.models.diffusion import DIFFUSION_CPU, DiffusionWorldModel

    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    kwargs = json.loads(arguments.env_kwargs)
    train = record_stream(arguments.env, kwargs, arguments.steps, arguments.seed)
    held_out = record_stream(arguments.env, kwargs, arguments.steps // 2, arguments.seed + 1000)
    from wmlab.envs.adapter import make_env

    env = make_env(arguments.env, **kwargs)
    config = replace(
        DIFFUSION_CPU,
        loss_scales=replace(DIFFUSION_CPU.loss_scales, sparse_weight=arguments.sparse_weight),
    )
    model = DiffusionWorldModel(config, env.observation_space, env.action_space)
    optimizer = torch.optim.AdamW(model.reward_end.parameters(), lr=arguments.learning_rate, weight_decay=1e-2)
    rng = np.random.default_rng(arguments.seed)
    probe = stream_windows(held_out, 256, arguments.length, np.random.default_rng(arguments.seed + 1))
    rows = []
    begin = time.perf_counter()
    for update in range(1, arguments.updates + 1):
        batch = stream_windows(train, arguments.batch_size, arguments.length, rng)
        frames = model.to_model_frames(batch.obs["image"], ("B", "T"), {})
        terms, _ = model.reward_end_loss(
            frames,
            torch.as_tensor(batch.action).long(),
            torch.as_tensor(batch.reward),
            torch.as_tensor(batch.is_first).bool(),
            torch.as_tensor(batch.is_terminal).bool(),
        )
        loss = terms["reward"] + terms["end"]
        for group in optimizer.param_groups:
            group["lr"] = arguments.learning_rate * min(1.0, update / 100)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.reward_end.parameters(), 100.0)
        optimizer.step()
        if update % arguments.every == 0:
            model.eval()
            row = {"update": update, "seconds": time.perf_counter() - begin, **reward_end_scores(model, probe)}
            model.train()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"arguments": vars(arguments), "rows": rows}


def play(env, policy, episodes: int, seed: int, max_steps: int) -> list[float]:
    """Returns of `episodes` episodes seeded seed, seed + 1, ...; policy(obs, state, first) ->
    (action, state)."""
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        state, total, first = None, 0.0, True
        for _ in range(max_steps):
            action, state = policy(observation, state, first)
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            first = False
            if terminated or truncated:
                break
        returns.append(total)
    return returns


def evaluate(arguments) -> dict:
    from wmlab.envs.adapter import make_env
    from wmlab.runs.directory import load_trained_agent

    torch.set_num_threads(1)
    spec, agent = load_trained_agent(arguments.run_dir)
    env = make_env(spec.env, **spec.evaluation_env_kwargs)
    agent.generator.manual_seed(arguments.seed)
    random_actions = np.random.default_rng(arguments.seed)

    def acting(explore: bool, temperature: float = 0.0):
        def policy(observation, state, first):
            agent.learner.config = replace(agent.learner.config, evaluation_temperature=temperature)
            batched = {key: value[None] for key, value in observation.items()}
            batched["is_first"] = np.array([first])
            action, state = agent.act(batched, state, explore=explore)
            return int(np.asarray(action).reshape(-1)[0]), state

        return policy

    def uniform(observation, state, first):
        return int(random_actions.integers(env.action_space.n)), None

    result = {
        "run": str(arguments.run_dir),
        "env": spec.env,
        "env_kwargs": spec.evaluation_env_kwargs,
        "seed": arguments.seed,
    }
    policies = {"greedy": acting(False), "sampled": acting(True)}
    policies.update({f"temperature_{value:g}": acting(False, value) for value in arguments.temperatures if value > 0})
    policies["random"] = uniform
    unknown = sorted(set(arguments.policies or ()) - set(policies))
    if unknown:
        raise SystemExit(f"no policy {', '.join(unknown)}; these are: {', '.join(policies)}")
    for name, policy in policies.items():
        if arguments.policies and name not in arguments.policies:
            continue
        returns = np.asarray(play(env, policy, arguments.episodes, arguments.seed, arguments.max_steps))
        result[name] = {
            "mean": float(returns.mean()),
            "standard_error": float(returns.std() / np.sqrt(len(returns))),
            "episodes": len(returns),
        }
        print(name, json.dumps(result[name]), flush=True)
    return result


def imagined_vs_real(arguments) -> dict:
    """For windows of burn-in + horizon real steps of RUN_DIR's replay: the world model filters
    the burn-in, then imagines the horizon under the actions that were really taken. Compared
    per window: the real return up to the episode's end against the imagined return (rewards
    weighted by the probability of still running), and whether the episode really ended against
    the imagined probability that it did."""
    from wmlab.eval.suites import episode_windows, replay_episodes, world_model_of
    from wmlab.runs.directory import load_trained_agent

    torch.set_num_threads(1)
    spec, agent = load_trained_agent(arguments.run_dir)
    model = world_model_of(agent).eval()
    burn_in, horizon = agent.learner.config.burn_in, agent.learner.config.horizon
    episodes = [episode for episode in replay_episodes(arguments.run_dir) if len(episode["reward"]) > burn_in]
    # Windows may run past an episode's end: pad each episode with its last step.
    padded = []
    for episode in episodes:
        extra = burn_in + horizon
        padded.append({key: np.concatenate([value, np.repeat(value[-1:], extra, 0)]) for key, value in episode.items()})
    batch = episode_windows(padded, arguments.windows, burn_in + horizon, seed=arguments.seed)
    head = slice(0, burn_in)
    torch.manual_seed(arguments.seed)
    with torch.no_grad():
        _, state = model.observe(
            {"image": batch.obs["image"][:, head]},
            batch.action[:, head],
            batch.is_first[:, head],
            model.initial(arguments.windows),
        )
        steps = arguments.denoising_steps or getattr(agent.config, "imagination_denoising_steps", 0)
        options = {"denoising_steps": steps} if steps else {}
        trajectory = model.imagine(state, torch.as_tensor(batch.action[:, burn_in:]), horizon, **options)
    rewards = np.asarray(batch.reward[:, burn_in:], np.float64)
    # Real: rewards until (and including) the first terminal step; padding repeats it, so stop there.
    terminal = np.asarray(batch.is_terminal[:, burn_in:]) | np.asarray(batch.is_last[:, burn_in:])
    ended_before = np.cumsum(terminal, 1) - terminal > 0
    real_return = (rewards * ~ended_before).sum(1)
    real_end = np.asarray(batch.is_terminal[:, burn_in:]).any(1)
    continues = trajectory.continues.double()
    alive = torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1].cumprod(1)], 1)
    imagined_return = (trajectory.rewards.double() * alive).sum(1).numpy()
    imagined_end = (1 - continues.prod(1)).numpy()

    # Objects kept or lost: lit pixels (> 0.5) per channel of the imagined frames against the
    # real ones, by imagined step (MinAtar: bricks, paddle, ball, trail).
    real_frames = torch.as_tensor(batch.obs["image"][:, burn_in:]).float() / 255
    observations = trajectory.observations or model.decode(trajectory.states)
    imagined_frames = observations["image"].float()
    lit_real = (real_frames > 0.5).float().sum((2, 3)).mean(0)  # (L, C)
    lit_imagined = (imagined_frames > 0.5).float().sum((2, 3)).mean(0)
    frame_error = (imagined_frames - real_frames).pow(2).mean((0, 2, 3, 4))  # (L,)

    def correlation(a, b):
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")

    result = {
        "run": str(arguments.run_dir),
        "windows": arguments.windows,
        "denoising_steps": steps or None,
        "burn_in": burn_in,
        "horizon": horizon,
        "real_return": float(real_return.mean()),
        "imagined_return": float(imagined_return.mean()),
        "return_correlation": correlation(real_return, imagined_return),
        "real_end_rate": float(real_end.mean()),
        "imagined_end_probability": float(imagined_end.mean()),
        "end_probability_if_ended": float(imagined_end[real_end].mean()) if real_end.any() else float("nan"),
        "end_probability_if_not": float(imagined_end[~real_end].mean()) if (~real_end).any() else float("nan"),
        "frame_mse_by_step": [round(float(value), 5) for value in frame_error],
        "lit_pixels_real_by_step_and_channel": lit_real.round(decimals=2).tolist(),
        "lit_pixels_imagined_by_step_and_channel": lit_imagined.round(decimals=2).tolist(),
    }
    print(json.dumps(result), flush=True)
    return result


def denoiser(arguments) -> dict:
    """The CPU preset's denoiser trained alone (AdamW 3e-4, clip 1, as `diamond-cpu`) on windows
    of RUN_DIR's replay, with `--foreground` weighting; every `--every` updates, the lit pixels
    (> 0.5) per channel of next frames sampled from real contexts, against the real frames."""
    from wmlab.envs.adapter import make_env
    from wmlab.eval.suites import replay_episodes
    from wmlab.models.diffusion import DIFFUSION_CPU, DiffusionWorldModel
    from wmlab.runs.directory import load_run_spec

    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    spec = load_run_spec(arguments.run_dir)
    env = make_env(spec.env, **spec.env_kwargs)
    config = replace(DIFFUSION_CPU, loss_scales=replace(DIFFUSION_CPU.loss_scales, foreground=arguments.foreground))
    model = DiffusionWorldModel(config, env.observation_space, env.action_space)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=3e-4, weight_decay=1e-2)
    episodes = replay_episodes(arguments.run_dir)
    stream = {key: np.concatenate([episode[key] for episode in episodes]) for key in episodes[0]}
    rng = np.random.default_rng(arguments.seed)
    probe = stream_windows(stream, 128, model.context + 1, np.random.default_rng(arguments.seed + 1))
    rows = []
    begin = time.perf_counter()
    for update in range(1, arguments.updates + 1):
        batch = stream_windows(stream, 8, 19, rng)
        sizes: dict[str, int] = {}
        frames = model.to_model_frames(batch.obs["image"], ("B", "T"), sizes)
        actions = torch.as_tensor(batch.action).long()
        for group in optimizer.param_groups:
            group["lr"] = 3e-4 * min(1.0, update / 100)
        model.train()
        loss, _ = model.denoising_loss(frames, actions, torch.as_tensor(batch.is_first).bool(), None)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.denoiser.parameters(), 1.0)
        optimizer.step()
        model.eval()
        if update % arguments.every == 0:
            K = model.context
            row = {"update": update, "seconds": round(time.perf_counter() - begin, 1)}
            with torch.no_grad():
                _, state = model.observe(
                    {"image": probe.obs["image"][:, :K]}, probe.action[:, :K], probe.is_first[:, :K], model.initial(128)
                )
                real = torch.as_tensor(probe.obs["image"][:, K]).float() / 255
                row["real_lit"] = (real > 0.5).float().sum((1, 2)).mean(0).round(decimals=2).tolist()
                for steps in (1, 3):
                    generated = model.imagine(
                        state, torch.as_tensor(probe.action[:, K : K + 1]), 1, denoising_steps=steps
                    )
                    image = generated.observations["image"][:, 0].float()
                    row[f"lit_{steps}_steps"] = (image > 0.5).float().sum((1, 2)).mean(0).round(decimals=2).tolist()
                    hits = ((image > 0.5) & (real > 0.5)).float().sum((0, 1, 2))
                    row[f"recall_{steps}_steps"] = (
                        (hits / (real > 0.5).float().sum((0, 1, 2)).clamp_min(1)).round(decimals=3).tolist()
                    )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"arguments": vars(arguments), "rows": rows}


def with_changes(config, changes: dict):
    """A frozen dataclass config with nested changes applied ({"model": {"loss_scales": {...}}})."""
    direct = {}
    for name, value in changes.items():
        current = getattr(config, name)
        direct[name] = with_changes(current, value) if isinstance(value, dict) and is_dataclass(current) else value
    return replace(config, **direct)


def iris_world_model(arguments) -> dict:
    """IRIS's tokenizer and world model (iris-cpu with `--changes`, no actor-critic) trained on a
    uniform-random stream: on held-out windows every `--every` updates, the next-token accuracy,
    reward and end precision / recall (calibrated, as imagination reads them), PSNR and code usage."""
    from wmlab.agents.iris.agent import IrisAgent
    from wmlab.agents.iris.config import IrisCPUConfig
    from wmlab.envs.adapter import make_env

    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)  # dropout draws from the global generator
    kwargs = json.loads(arguments.env_kwargs)
    train = record_stream(arguments.env, kwargs, arguments.steps, arguments.seed)
    held_out = record_stream(arguments.env, kwargs, arguments.steps // 2, arguments.seed + 1000)
    env = make_env(arguments.env, **kwargs)
    config = with_changes(IrisCPUConfig(), {"actor_critic_starts": 10**9, **json.loads(arguments.changes)})
    agent = IrisAgent(config, env.observation_space, env.action_space, seed=arguments.seed)
    rng = np.random.default_rng(arguments.seed)
    probe = stream_windows(held_out, 128, arguments.length, np.random.default_rng(arguments.seed + 1))
    rows = []
    begin = time.perf_counter()
    for update in range(1, arguments.updates + 1):
        if update == arguments.freeze_tokenizer_after:
            for group in agent.tokenizer_optimizer.param_groups:
                group["lr"] = 0.0
        agent.update(stream_windows(train, arguments.batch_size, arguments.length, rng))
        if update % arguments.every == 0 and update > config.world_model_starts:
            with torch.no_grad():
                _, metrics = agent.world_model.loss_terms(probe)
                # What the actions are worth: token loss with each window's actions drawn afresh.
                actions = agent.world_model.action_size
                shuffled = replace(probe, action=np.random.default_rng(7).integers(0, actions, probe.action.shape))
                _, unconditioned = agent.world_model.loss_terms(shuffled, tokenizer=False)
                metrics["action_gain"] = unconditioned["wm/token_nll"] - metrics["wm/token_nll"]
                tokens, _ = agent.world_model.tokenize(torch.as_tensor(probe.obs["image"]).flatten(0, 1))
                tokens = tokens.reshape(*probe.reward.shape, -1)
                repeated = torch.as_tensor(~probe.is_first[:, 1:])
                copied = (tokens[:, 1:] == tokens[:, :-1]).float().mean(-1)[repeated].mean()
            row = {"update": update, "seconds": round(time.perf_counter() - begin, 1), "copy_accuracy": float(copied)}
            row.update({name: round(float(value), 6) for name, value in metrics.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"arguments": vars(arguments), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("reward-end")
    command.add_argument("--env", default="minatar:breakout")
    command.add_argument("--env-kwargs", default='{"size": 16}')
    command.add_argument("--steps", type=int, default=3000)
    command.add_argument("--updates", type=int, default=600)
    command.add_argument("--every", type=int, default=50)
    command.add_argument("--batch-size", type=int, default=8)
    command.add_argument("--length", type=int, default=19)
    command.add_argument("--learning-rate", type=float, default=3e-4)
    command.add_argument("--sparse-weight", type=float, default=1.0)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--out", default=None)
    command = commands.add_parser("evaluate")
    command.add_argument("run_dir")
    command.add_argument("--episodes", type=int, default=100)
    command.add_argument("--max-steps", type=int, default=500)
    command.add_argument(
        "--temperatures", type=float, nargs="*", default=[0.5, 1.0], help="evaluation temperatures (epsilon 0)"
    )
    command.add_argument(
        "--policies", nargs="*", default=None, help="only these: greedy, sampled, temperature_T, random (default: all)"
    )
    command.add_argument("--seed", type=int, default=20_000)
    command.add_argument("--out", default=None)
    command = commands.add_parser("denoiser")
    command.add_argument("run_dir")
    command.add_argument("--updates", type=int, default=300)
    command.add_argument("--every", type=int, default=100)
    command.add_argument("--foreground", type=float, default=0.0)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--out", default=None)
    command = commands.add_parser("imagined-vs-real")
    command.add_argument("run_dir")
    command.add_argument("--windows", type=int, default=256)
    command.add_argument("--denoising-steps", type=int, default=0, help="diffusion models: 0 = the agent's setting")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--out", default=None)
    command = commands.add_parser("iris-world-model")
    command.add_argument("--env", default="minatar:breakout")
    command.add_argument("--env-kwargs", default='{"size": 16}')
    command.add_argument("--steps", type=int, default=4000)
    command.add_argument("--updates", type=int, default=1000)
    command.add_argument("--every", type=int, default=100)
    command.add_argument("--batch-size", type=int, default=8)
    command.add_argument("--length", type=int, default=10)
    command.add_argument("--changes", default="{}", help="JSON changes of the iris-cpu config, nested")
    command.add_argument("--freeze-tokenizer-after", type=int, default=0, help="0: never")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--out", default=None)
    arguments = parser.parse_args()
    commands_by_name = {
        "reward-end": reward_end,
        "evaluate": evaluate,
        "imagined-vs-real": imagined_vs_real,
        "denoiser": denoiser,
        "iris-world-model": iris_world_model,
    }
    result = commands_by_name[arguments.command](arguments)
    if arguments.out:
        with open(arguments.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
