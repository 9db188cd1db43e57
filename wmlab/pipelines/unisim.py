"""`wmlab pipeline unisim`: UniSim's zero-shot transfer in small (Yang et al. 2023, arXiv:2310.06114,
Sec. 4.2: a policy trained only inside the instruction-conditioned simulator, then run in the
real environment).

    wmlab pipeline unisim --run logs/unisim/run --out runs/unisim-zero-shot --updates 500 --seed 0
    wmlab pipeline unisim ... --baseline runs/diamond-cpu-two-rooms    (evaluated on the same episodes)

1. The simulator: a diffusion world model trained offline on instructions (`wmlab train --model
   diffusion --dataset INSTRUCTIONS --world-model.condition-size-input 384`, the dataset written by
   `python -m wmlab.data.instructions`). Its only action is the null one; an instruction (the
   frozen sentence encoder's embedding of its text, wmlab.nn.text) conditions each next frame.
2. The agent: the actor-critic shared by DIAMOND and IRIS (wmlab.agents.imagination.learner),
   acting over the instruction vocabulary (`instructions`, default the five moves of the captions:
   "stay still", "move up", "move down", "move left", "move right"); `imagine` conditions each
   imagined step on the embedding of the instruction the policy picked at it (per-step
   conditioning, classifier-free guidance `guidance`). Burn-in windows are real frames of the
   model's own training dataset. `updates` actor-critic updates, nothing learnt from the real
   environment.
3. Zero-shot: the agent acts in the real environment (`env`, default `two-rooms-discrete`) through
   the map from instructions to the environment's discrete moves (INSTRUCTION_MOVES: "move left" ->
   LEFT, ...): `episodes` evaluation episodes seeded `evaluation_seed + i`, actions sampled as in
   DIAMOND's test episodes (the learner's `evaluation_temperature`); the same episodes played by
   uniform random moves (its own generator, seeded `seed`) and, given `baseline`, by an agent run
   trained in the real environment (`wmlab train --algo diamond-cpu --env two-rooms-discrete`).

    OUT/config.json                     "kind": "unisim-zero-shot", these settings
    OUT/metrics.jsonl                   the actor-critic's losses every `log_every` updates
    OUT/checkpoints/rank0/agent.*       the actor-critic (safetensors + JSON)
    OUT/result.json                     zero-shot, random (and baseline) success rate and return

Shape legend: B batch, L horizon, V instructions, D text features, H, W, C image.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from wmlab.agents.diamond.config import DiamondCPUConfig
from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.agents.imagination.learner import ImaginationLearner
from wmlab.core.config import from_dict, parse_json_object
from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.core.serialization import load_state, save_checkpoint_directory
from wmlab.core.types import Trajectory
from wmlab.data.dataset import load_dataset
from wmlab.envs.adapter import make_env
from wmlab.eval.returns import evaluate_agent
from wmlab.nn.text import load_text_encoder
from wmlab.runs.directory import is_offline_run, load_trained_agent, load_trained_model

KIND = "unisim-zero-shot"

#: Each instruction of the captioned two-rooms episodes (wmlab.data.captions) that names a move,
#: and the discrete move of the real environment (its `get_action_meanings()`) that carries it out.
INSTRUCTION_MOVES = {
    "stay still": "NOOP",
    "move up": "UP",
    "move down": "DOWN",
    "move left": "LEFT",
    "move right": "RIGHT",
}


@dataclass(frozen=True)
class UnisimConfig:
    """UniSim's zero-shot transfer: an actor-critic trained only in an instruction-conditioned
    diffusion model, then evaluated in the real environment."""

    run: Path
    """The UniSim run: an offline diffusion run trained on instructions (condition_size_input > 0)."""
    out: Path
    """Output directory (config, metrics, the actor-critic's checkpoint, result.json)."""
    updates: int = 500
    """N, actor-critic updates in the simulator."""
    seed: int = 0
    """Seeds the actor-critic, imagination, the burn-in windows and the random player."""
    instructions: tuple[str, ...] = tuple(INSTRUCTION_MOVES)
    """The agent's actions: instructions of the model's dataset, each with a move in INSTRUCTION_MOVES."""
    guidance: float = 1.0
    """Classifier-free guidance scale of the instructions in imagination (1: the conditional model)."""
    denoising_steps: int = 0
    """Denoising steps per imagined frame (0: the model's sampler's)."""
    batch_size: int = 8
    """Burn-in windows drawn per update from the model's dataset (the learner's `starts` rows imagine)."""
    learner: ImaginationConfig = field(default_factory=lambda: DiamondCPUConfig().learner)
    """The actor-critic (default diamond-cpu's, so the comparison differs only in where it learns)."""
    env: str = "two-rooms-discrete"
    """The real environment of the zero-shot evaluation (discrete moves named as INSTRUCTION_MOVES' values)."""
    env_kwargs: str = "{}"
    """JSON keyword arguments of the real environment."""
    episodes: int = 50
    """Evaluation episodes in the real environment."""
    evaluation_seed: int = 1_000_000
    """Episode i of every evaluation (zero-shot, random, baseline) starts from reset(seed=this + i)."""
    baseline: Path | None = None
    """An agent run trained in the real environment (diamond-cpu), evaluated on the same episodes."""
    match_baseline: bool = False
    """Train for as many actor-critic updates as the baseline's learner made (instead of `updates`)."""
    text_encoder: str = ""
    """The text encoder, as module:factory (empty: wmlab.nn.text's all-MiniLM-L6-v2, as the dataset's)."""
    log_every: int = 25
    """Write the actor-critic's losses to metrics.jsonl every this many updates."""
    time_limit: float = 0.0
    """Stop training after this many seconds (0: no limit); the updates reached are reported."""
    evaluate_every: int = 0
    """Every this many updates (0: never) and at the end, append a row to OUT/evaluations.jsonl: the
    zero-shot return in the real environment (`episodes` episodes) and the return inside the
    simulator of the policy and of uniform random instructions (`probe` fixed starts); the actor-critic
    is kept in OUT/kept/update-N."""
    probe: int = 32
    """Burn-in windows of the model's dataset, drawn once, from which `evaluate_every` imagines."""
    threads: int = 1
    """torch threads."""
    force: bool = False
    """Overwrite an existing output directory."""


class InstructionSimulator:
    """The interface of ImaginationLearner over a diffusion model conditioned on instructions: the
    policy's actions are instruction indices (B,) in [0, V), each looked up in `table` (V, D) and
    given to the model as that step's conditioning; the model's own action is the null one."""

    def __init__(self, model: Any, table: torch.Tensor):
        self.model = model
        self.table = table.to(model.device).float()

    def initial(self, batch_size: int) -> Any:
        return self.model.initial(batch_size)

    def observe(self, obs: dict, actions: Any, is_first: Any, state: Any) -> tuple[Any, Any]:
        return self.model.observe(obs, actions, is_first, state)

    def decode(self, state: Any) -> dict[str, torch.Tensor]:
        return self.model.decode(state)

    def imagine(self, state: Any, policy: Any, horizon: int, **options: Any) -> Trajectory:
        """A rollout of `horizon` steps whose step l is conditioned on the embedding of the
        instruction policy(current state) picks there; actions (B, L) are those instruction indices."""
        B = state["frames"].shape[0]
        chosen: list[torch.Tensor] = []

        def condition(index: int, current: Any) -> torch.Tensor:
            instruction = torch.as_tensor(policy(current), device=self.table.device).long()
            chosen.append(instruction)
            return self.table[instruction]  # (B, D)

        null_actions = torch.zeros(B, horizon, dtype=torch.long, device=self.model.device)
        trajectory = self.model.imagine(state, null_actions, horizon, condition=condition, **options)
        return replace(trajectory, actions=torch.stack(chosen, 1))


class ZeroShotAgent:
    """The learner's policy in the real environment: each chosen instruction becomes its move."""

    def __init__(self, learner: ImaginationLearner, moves: np.ndarray):
        self.learner, self.moves = learner, moves

    def act(self, obs: dict, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        instructions, recurrent = self.learner.act(obs["image"], state, obs["is_first"], explore)
        return self.moves[instructions.cpu().numpy()], recurrent


class RandomAgent:
    """Uniform random moves of a Discrete(n) environment, from its own seeded generator."""

    def __init__(self, actions: int, seed: int):
        self.actions, self.rng = actions, np.random.default_rng(seed)

    def act(self, obs: dict, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        return self.rng.integers(self.actions, size=len(obs["is_first"])), None


def load_simulator(run: Path) -> tuple[Any, Any]:
    """(OfflineRunSpec, model) of a UniSim run; a clear error for any other run."""

    if not is_offline_run(run):
        raise RunDirectoryError(
            f"{run} holds an agent's run; the zero-shot pipeline needs a UniSim run (wmlab train --model diffusion --dataset INSTRUCTIONS)"
        )
    spec, model = load_trained_model(run)
    if int(getattr(getattr(model, "config", None), "condition_size_input", 0) or 0) <= 0:
        raise WmlabError(
            f"{run} was trained without instructions ({spec.model}, condition_size_input 0): the zero-shot pipeline "
            "needs a diffusion model trained on an instruction dataset (python -m wmlab.data.instructions, "
            "--world-model.condition-size-input 384)"
        )
    return spec, model.eval()


def load_zero_shot(out: Path, checkpoint: Path | None = None) -> tuple[dict[str, Any], ImaginationLearner, np.ndarray]:
    """(the pipeline's settings, its actor-critic, the move of each instruction) of an output
    directory of `wmlab pipeline unisim`; `checkpoint` a folder holding agent.* (default its final
    checkpoint; OUT/kept/update-N holds the one after N updates with --evaluate-every)."""
    config_path = Path(out) / "config.json"
    if not config_path.is_file():
        raise RunDirectoryError(f"{out} is not an output directory of `wmlab pipeline unisim` (no config.json)")
    config = json.loads(config_path.read_text())
    if config.get("kind") != KIND:
        raise RunDirectoryError(f"{out} holds {config.get('kind')!r}, not a {KIND} output")
    settings = config["pipeline"]
    instructions = tuple(settings["instructions"])
    env = make_env(settings["env"], **parse_json_object("env_kwargs", settings["env_kwargs"]))
    meanings = list(env.unwrapped.get_action_meanings()) if hasattr(env.unwrapped, "get_action_meanings") else []
    image_shape = tuple(int(side) for side in env.observation_space["image"].shape)
    env.close()
    moves = instruction_moves(instructions, list(instructions), meanings, settings["env"])
    learner = ImaginationLearner(
        from_dict(ImaginationConfig, settings["learner"]),
        image_shape,
        len(instructions),
        torch.device("cpu"),
        torch.Generator().manual_seed(int(settings["seed"])),
    )
    learner.load_state_dict(load_state(Path(checkpoint or Path(out) / "checkpoints" / "rank0"), "agent"))
    return settings, learner, moves


def instruction_moves(instructions: tuple[str, ...], known: list[str], meanings: list[str], env: str) -> np.ndarray:
    """The real environment's action index (V,) of each instruction; clear errors for an
    instruction the model was not trained on or with no move in `env`."""
    if not instructions:
        raise WmlabError("--instructions is empty: give the instructions the agent chooses from")
    moves = []
    for text in instructions:
        if text not in known:
            raise WmlabError(f"unknown instruction {text!r}: the model was trained on the instructions {known}")
        if text not in INSTRUCTION_MOVES or INSTRUCTION_MOVES[text] not in meanings:
            raise WmlabError(
                f"instruction {text!r} has no move in {env} (its moves {meanings}); the instructions with moves: {list(INSTRUCTION_MOVES)}"
            )
        moves.append(meanings.index(INSTRUCTION_MOVES[text]))
    return np.asarray(moves, dtype=np.int64)


def run_zero_shot(config: UnisimConfig) -> dict[str, Any]:
    """Train the actor-critic in the simulator, then evaluate it, random play and the baseline in
    the real environment; writes OUT and returns result.json's content."""

    if config.updates < 0 or config.episodes < 1:
        raise WmlabError(f"--updates must be >= 0 and --episodes >= 1, got {config.updates} and {config.episodes}")
    if config.evaluate_every < 0 or config.probe < 1:
        raise WmlabError(
            f"--evaluate-every must be >= 0 and --probe >= 1, got {config.evaluate_every} and {config.probe}"
        )
    torch.set_num_threads(config.threads)
    env_kwargs = parse_json_object("--env-kwargs", config.env_kwargs)
    spec, model = load_simulator(Path(config.run))
    dataset = load_dataset(spec.dataset, seed=config.seed)
    known = list(json.loads((Path(spec.dataset) / "manifest.json").read_text()).get("instructions", []))
    env = make_env(config.env, **env_kwargs)
    meanings = list(env.unwrapped.get_action_meanings()) if hasattr(env.unwrapped, "get_action_meanings") else []
    actions = int(env.action_space.n)
    env.close()
    moves = instruction_moves(tuple(config.instructions), known, meanings, config.env)
    encoder = load_text_encoder(config.text_encoder or None)
    with torch.no_grad():
        table = torch.as_tensor(encoder.encode(list(config.instructions))).float()
    if table.shape[-1] != model.config.condition_size_input:
        raise WmlabError(
            f"the text encoder gives {table.shape[-1]} features, {config.run} was trained on {model.config.condition_size_input}; pass its --text-encoder"
        )

    baseline = None
    if config.baseline is not None:
        baseline_spec, baseline = load_trained_agent(config.baseline)
        trained_in = (baseline_spec.env, dict(baseline_spec.env_kwargs))
        if trained_in != (config.env, env_kwargs) or not hasattr(baseline, "learner"):
            raise WmlabError(
                f"the baseline {config.baseline} must be an imagination agent (diamond-cpu) trained in {config.env} "
                f"with --env-kwargs {json.dumps(env_kwargs)}; it is {baseline_spec.algorithm} in {trained_in[0]} "
                f"with {json.dumps(trained_in[1])}"
            )
        if config.match_baseline:
            config = replace(config, updates=int(baseline.learner.updates))
    elif config.match_baseline:
        raise WmlabError("--match-baseline needs --baseline RUN_DIR")
    out = Path(config.out)
    if (out / "result.json").exists() and not config.force:
        raise RunDirectoryError(f"{out} already holds a result; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"kind": KIND, "pipeline": asdict(config)}, indent=2, default=str))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    image_shape = tuple(int(side) for side in dataset.observation_space["image"].shape)
    learner = ImaginationLearner(config.learner, image_shape, len(config.instructions), model.device, generator)
    simulator = InstructionSimulator(model, table)
    options: dict[str, Any] = {"guidance": config.guidance, "generator": generator}
    if config.denoising_steps:
        options["denoising_steps"] = config.denoising_steps

    def evaluate(agent: Any) -> dict[str, float]:
        return evaluate_agent(agent, config.env, config.episodes, config.evaluation_seed, env_kwargs)

    probe = None
    if config.evaluate_every > 0:
        drawn_from = dataset.sampler_state()  # the probe's windows leave training's draws as they were
        probe = dataset.sample(config.probe, config.learner.burn_in)
        dataset.load_sampler_state(drawn_from)

    def evaluate_in_both(log: Any) -> float:
        """One row of evaluations.jsonl (`evaluate_every`), the same probe numbers every time; -> seconds."""
        begun = time.time()
        row: dict[str, Any] = {"update": learner.updates, "zero_shot": evaluate(ZeroShotAgent(learner, moves))}
        for policy in ("sample", "uniform"):
            numbers = torch.Generator().manual_seed(config.seed + 17)
            inside = learner.imagined_return(simulator, probe, policy, numbers, **{**options, "generator": numbers})
            row[f"simulator_{policy}"] = inside
        log.write(json.dumps(row) + "\n")
        log.flush()
        save_checkpoint_directory(out / "kept" / f"update-{learner.updates}", {"agent": learner.state_dict()})
        return time.time() - begun

    started, evaluating = time.time(), 0.0  # evaluation counts neither in the time limit nor in training_seconds
    evaluations = open(out / "evaluations.jsonl", "w") if probe is not None else None
    with open(out / "metrics.jsonl", "w") as log:
        while learner.updates < config.updates:
            if config.time_limit and time.time() - started - evaluating > config.time_limit:
                break
            if evaluations is not None and learner.updates % config.evaluate_every == 0:
                evaluating += evaluate_in_both(evaluations)
            metrics = learner.update(simulator, dataset.sample(config.batch_size, config.learner.burn_in), **options)
            if learner.updates % config.log_every == 0 or learner.updates == config.updates:
                seconds = time.time() - started - evaluating
                log.write(json.dumps({"update": learner.updates, "time": seconds, **metrics}) + "\n")
                log.flush()
    seconds = time.time() - started - evaluating
    if evaluations is not None:
        evaluate_in_both(evaluations)
        evaluations.close()
    save_checkpoint_directory(out / "checkpoints" / "rank0", {"agent": learner.state_dict()})

    result: dict[str, Any] = {
        "run": str(config.run),
        "updates": learner.updates,
        "training_seconds": seconds,
        "instructions": {text: meanings[move] for text, move in zip(config.instructions, moves)},
        "env": config.env,
        "episodes": config.episodes,
        "evaluation_seeds": [config.evaluation_seed, config.evaluation_seed + config.episodes - 1],
        "zero_shot": evaluate(ZeroShotAgent(learner, moves)),
        "random": evaluate(RandomAgent(actions, config.seed)),
    }
    if baseline is not None:
        result["baseline"] = {
            "run": str(config.baseline),
            "updates": int(baseline.learner.updates),  # its actor-critic's
            "world_model_updates": int(baseline.updates),
            **evaluate(baseline),
        }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def pipeline_command(argv: list[str]) -> int:
    config = tyro.cli(UnisimConfig, args=argv, prog="wmlab pipeline unisim", description=__doc__.split("\n\n")[0])
    result = run_zero_shot(config)
    rows = [("zero-shot", result["zero_shot"]), ("random", result["random"])]
    if "baseline" in result:
        rows.append(("baseline", result["baseline"]))
    print(
        f"{result['updates']} updates in the simulator ({result['training_seconds']:.0f} s); {result['episodes']} episodes of {result['env']}:"
    )
    for name, metrics in rows:
        print(
            f"  {name}: success {metrics.get('eval/success', float('nan')):.2f}, return {metrics['eval/return']:.3f} +- {metrics['eval/return_std']:.3f}"
        )
    return 0
