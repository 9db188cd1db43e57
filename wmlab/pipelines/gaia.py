"""`wmlab pipeline gaia`: GAIA-1 in small, a token world model conditioned on text and actions,
trained on captioned two-rooms episodes, then measured; `wmlab generate RUN_DIR --text ...` on it.

    wmlab pipeline gaia --run-dir runs/gaia --minutes 15
    wmlab pipeline gaia --resume runs/gaia --minutes 30          (continues the same run)
    wmlab generate runs/gaia --text "move left" --actions none --guidance 3 --out left.mp4

1. Data: captioned two-rooms episodes (wmlab.data.captions, captions true by construction),
   `train_episodes` from seed 0 and `valid_episodes` from seed 100000 (held-out layouts) into
   RUN_DIR/data/{train,valid}; `--dataset DIR` trains on an existing captioned dataset instead
   (a caption file that does not match its episodes is refused, naming the file).
2. Training, GAIA-1's way round: the tokenizer alone for `tokenizer_updates` (frames drawn one
   by one, Adam 1e-3, dead codes restarted), then the transformer on its frozen tokens: the
   token model (wmlab.models.tokens; GAIA-1, Hu et al. 2023, arXiv:2309.17080, Sec. 2) with a
   text token per step (the all-MiniLM-L6-v2 embedding of the step's caption, wmlab.nn.text)
   and continuous actions, text and actions each dropped at random for
   classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598); AdamW on B x T windows for
   `updates` updates or `minutes` of wall clock, checkpointed (safetensors + JSON) for an exact
   resume.
3. Measures, in RUN_DIR/result.json:
   - validation token loss (nats per token) on fixed held-out windows with text + actions,
     actions only, text only, and neither (the unconditional model);
   - text fidelity: from held-out first frames, `steps` frames generated from each movement
     prompt ("move left/right/up/down") with the actions dropped, at guidance scales 0 (the
     unconditional model), 1, 3, 7; a probe reads the agent's move in each pair of generated
     frames (the centroid of agent-coloured pixels; its accuracy on real held-out moves is
     reported beside it) and we count agreement with the prompt, against the random-caption
     baseline (agreement of the same clips with a movement caption drawn at random);
   - action fidelity: `controllability` (delta-PSNR of frames generated with the real against
     shuffled actions) on held-out windows.

    RUN_DIR/config.json                 "kind": "gaia", the model config and these settings
    RUN_DIR/metrics.jsonl               training curve (loss terms every `log_every` updates)
    RUN_DIR/checkpoints/rank0/          model.* and trainer.* (safetensors + JSON)
    RUN_DIR/result.json                 the measures above

Shape legend: B batch, T time, L generated steps, S start frames, Dt text features.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import tyro
from gymnasium import spaces

from wmlab.core.config import from_dict
from wmlab.core.errors import RunDirectoryError, ShapeError, WmlabError
from wmlab.core.images import to_pixels
from wmlab.core.optim import OptimizerConfig, clipped_step, make_optimizer
from wmlab.core.serialization import (
    global_random_state,
    load_state,
    restore_global_random_state,
    save_checkpoint_directory,
)
from wmlab.core.spaces import space_from_description
from wmlab.data.captions import (
    MOVE_DIRECTIONS,
    MOVES,
    CaptionedDataset,
    caption_step,
    load_captioned,
    record_captioned_two_rooms,
)
from wmlab.data.dataset import read_manifest
from wmlab.envs.two_rooms import AGENT_RGB
from wmlab.eval.generation import write_contact_sheet, write_video
from wmlab.eval.suites import SuiteSettings, evaluate_suite
from wmlab.models.tokens import SIZES, TokenLossScales, TokenWorldModel, TokenWorldModelConfig
from wmlab.nn.text import load_text_encoder

CONFIG_FILE = "config.json"
KIND = "gaia"
GUIDANCE_SCALES = (0.0, 1.0, 3.0, 7.0)


@dataclass(frozen=True)
class GaiaConfig:
    """GAIA-1 in small on captioned two-rooms."""

    #: Settings that moved into `optimizer` (read from an older run's config.json).
    moved_fields = MappingProxyType({"learning_rate": "optimizer.learning_rate"})
    #: Settings added later, with the values that reproduce a run recorded before them (resume).
    introduced = MappingProxyType({"tokenizer_updates": 0, "changed_tokens": 1.0, "action_in_tokens": False})

    run_dir: Path = Path("runs/gaia")
    """Where the run lives (data, checkpoints, metrics, result)."""
    resume: Path | None = None
    """Continue this run (its settings, with --updates / --minutes / --threads changed)."""
    dataset: Path | None = None
    """Train on this captioned dataset (wmlab.data.captions layout) instead of recording one."""
    size: str = "cpu"
    """Size of the token model (tiny, cpu, iris)."""
    image_size: int = 32
    """Side of the recorded frames (16, 32 or 64: a 4 x 4 grid of 16 tokens each)."""
    train_episodes: int = 300
    """Recorded training episodes (seeds 0, 1, ...)."""
    valid_episodes: int = 40
    """Recorded held-out episodes (seeds 100000, ...)."""
    episode_steps: int = 40
    """Longest recorded episode."""
    updates: int = 100_000
    """Training updates (the run stops at this or at `minutes`)."""
    minutes: float = 15.0
    """Wall-clock budget of the training, in minutes (0: none)."""
    batch_size: int = 8
    """B, windows per update."""
    length: int = 8
    """T, steps per window (at most the model's context)."""
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=3e-4, weight_decay=0.01, grad_clip=10.0)
    )
    """AdamW of the token model (learning rate 3e-4, weight decay 0.01, gradient norm clipped at 10)."""
    tokenizer_updates: int = 600
    """Updates of the tokenizer alone (its own Adam, `tokenizer_optimizer`, dead codes restarted)
    before the transformer learns on its frozen tokens, as GAIA-1 trains its image tokenizer
    first; 0: both from the first update, jointly under `optimizer` (the pipeline until
    2026-12-06: its tokenizer drew no agent after 250 joint updates, where the tokenizer alone at
    1e-3 draws it in 95 % of held-out frames after 1,500; docs/benchmarks.md)."""
    tokenizer_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-3, grad_clip=10.0)
    )
    """Adam of the tokenizer's own updates (learning rate 1e-3, gradient norm clipped at 10)."""
    changed_tokens: float = 10.0
    """Weight in the token loss of the tokens that change between frames (TokenLossScales; 1: the
    plain mean). With iris-cpu's 10 the transformer reads the actions within 400 updates."""
    action_in_tokens: bool = True
    """Add each step's action to its frame tokens' embeddings (TokenWorldModelConfig)."""
    text_dropout: float = 0.15
    """Probability that a window's text is replaced by the null text (classifier-free guidance)."""
    text_standardize: bool = False
    """Standardise the caption embeddings per dimension before the text token's projection
    (TokenWorldModelConfig.text_standardize)."""
    action_dropout: float = 0.15
    """Probability that a window's actions are replaced by the null action."""
    foreground: float = 20.0
    """Extra reconstruction weight of pixels that differ from the batch's background (the agent, the goal); see TokenLossScales."""
    starts: int = 16
    """Held-out start frames per prompt for text fidelity."""
    steps: int = 6
    """Frames generated per start for text fidelity."""
    log_every: int = 25
    """Updates between lines of metrics.jsonl."""
    checkpoint_every: int = 100
    """Updates between checkpoints."""
    seed: int = 0
    """Seed of the model, the window sampler and the generation."""
    threads: int = 1
    """torch threads."""


def model_config(config: GaiaConfig, text_size: int) -> TokenWorldModelConfig:
    return TokenWorldModelConfig(
        size=SIZES[config.size],
        continuous_actions=True,
        reward_head="twohot",
        text_size=text_size,
        text_dropout=config.text_dropout,
        text_standardize=config.text_standardize,
        action_dropout=config.action_dropout,
        guided="text",
        # The tokenizer phase restarts dead codes onto the worst-reconstructed encodings (as in
        # benchmarks/tokenizer_agent_check.py); a joint run keeps its random restarts.
        restart_on="error" if config.tokenizer_updates > 0 else "random",
        action_in_tokens=config.action_in_tokens,
        loss_scales=TokenLossScales(foreground=config.foreground, changed_tokens=config.changed_tokens),
    )


def spaces_of(directory: Path) -> tuple[spaces.Space, spaces.Space]:
    manifest = read_manifest(directory)
    return space_from_description(manifest["observation_space"]), space_from_description(manifest["action_space"])


# ----------------------------------------------------------------------------------------------
# The probe of the agent's move


def agent_centre(frames: np.ndarray, colour: tuple[int, int, int] = AGENT_RGB) -> np.ndarray:
    """Centroids (..., 2) as (x, y up) in arena units of the agent-coloured pixels of frames
    (..., H, W, 3), uint8 or float in [0, 1] (the scale is read from the dtype, never guessed from
    the values); NaN where no pixel is close to the agent's colour (or `colour`: GOAL_RGB finds the
    goal)."""
    frames = np.asarray(frames)
    if np.issubdtype(frames.dtype, np.integer):
        frames = frames.astype(np.float32) / 255.0
    elif frames.size and float(frames.max()) > 1.5:
        raise ShapeError(
            f"agent_centre: float frames must lie in [0, 1], got values up to {float(frames.max()):.1f} "
            "(uint8 frames and float frames mixed into one array?)"
        )
    height, width = frames.shape[-3:-1]
    close = np.abs(frames - np.array(colour, np.float32) / 255.0).max(-1) < 0.2  # (..., H, W)
    count = close.sum((-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        y_pixels = (close * np.arange(height, dtype=np.float32)[:, None]).sum((-1, -2)) / count
        x_pixels = (close * np.arange(width, dtype=np.float32)[None, :]).sum((-1, -2)) / count
    return np.stack([(x_pixels + 0.5) / width, 1 - (y_pixels + 0.5) / height], -1)  # row 0 is the top


def probe_moves(frames: np.ndarray) -> np.ndarray:
    """The movement caption of each consecutive pair of frames (..., L, H, W, 3) -> (..., L - 1)
    strings ("no agent" where a frame shows none); door and goal captions are not read."""
    centres = agent_centre(frames)
    moves = np.empty(centres.shape[:-2] + (centres.shape[-2] - 1,), dtype=object)
    for index in np.ndindex(moves.shape):
        before, after = centres[index[:-1] + (index[-1],)], centres[index[:-1] + (index[-1] + 1,)]
        if np.isnan(before).any() or np.isnan(after).any():
            moves[index] = "no agent"
        else:
            moves[index] = caption_step(tuple(before), tuple(after), False, False, 0.05, middle_x=2.0)
    return moves


def batch_text(captions: list[list[str]], table: dict[str, torch.Tensor]) -> torch.Tensor:
    """Captions [B][T] -> embeddings (B, T, Dt)."""
    return torch.stack([torch.stack([table[caption] for caption in row]) for row in captions])


# ----------------------------------------------------------------------------------------------
# The run


class GaiaRun:
    """One run directory: data, model, optimiser, counters."""

    def __init__(self, config: GaiaConfig, resume: bool = False):
        self.config, self.run_dir = config, Path(config.run_dir)
        torch.set_num_threads(config.threads)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        if not resume and self.run_dir.exists() and (self.run_dir / CONFIG_FILE).exists():
            raise RunDirectoryError(
                f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir} or choose another --run-dir"
            )
        self.train_dir = Path(config.dataset) if config.dataset else self.run_dir / "data" / "train"
        self.valid_dir = self.run_dir / "data" / "valid"
        started = time.time()
        self._record()
        self.train = load_captioned(self.train_dir, seed=config.seed)
        self.valid = load_captioned(self.valid_dir, seed=config.seed + 1)
        self.recording_seconds = time.time() - started
        self.encoder = load_text_encoder()
        vocabulary = sorted(set(self.train.vocabulary) | set(self.valid.vocabulary) | {*MOVES, "stay still"})
        self.table = dict(zip(vocabulary, self.encoder.encode(vocabulary)))
        observation_space, action_space = spaces_of(self.train_dir)
        self.model = TokenWorldModel(model_config(config, self.encoder.dim), observation_space, action_space)
        if config.length > self.model.context:
            raise WmlabError(f"--length {config.length} exceeds the model's context of {self.model.context} steps")
        self.optimizer = make_optimizer(self.model.parameters(), config.optimizer)
        self.tokenizer_optimizer = make_optimizer(self.model.tokenizer.parameters(), config.tokenizer_optimizer)
        self.counters = {"updates": 0, "seconds": 0.0}
        if resume:
            self._load()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(json.dumps(self.describe(), indent=2, default=str))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "pipeline": {
                key: str(value) if isinstance(value, Path) else value for key, value in asdict(self.config).items()
            },
            "model": asdict(self.model.config),
            "train_dataset": str(self.train_dir),
            "valid_dataset": str(self.valid_dir),
        }

    def _record(self) -> None:
        config = self.config
        kwargs = {"image_size": config.image_size}
        if config.dataset is None and not (self.train_dir / "captions.json").is_file():
            record_captioned_two_rooms(
                self.train_dir, config.train_episodes, 0, config.episode_steps, force=True, env_kwargs=kwargs
            )
        if not (self.valid_dir / "captions.json").is_file():
            if config.dataset is not None:  # held-out layouts at the given dataset's frame size
                observation_space, _ = spaces_of(self.train_dir)
                kwargs = {"image_size": int(observation_space["image"].shape[0])}
            record_captioned_two_rooms(
                self.valid_dir, config.valid_episodes, 100_000, config.episode_steps, force=True, env_kwargs=kwargs
            )

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self) -> None:
        trainer = {
            "optimizer": self.optimizer.state_dict(),
            "tokenizer_optimizer": self.tokenizer_optimizer.state_dict(),
            "counters": dict(self.counters),
            "sampler": json.dumps(self.train.rng.bit_generator.state),
            "rng": global_random_state(),
        }
        save_checkpoint_directory(
            self.run_dir / "checkpoints" / "rank0", {"model": dict(self.model.state_dict()), "trainer": trainer}
        )

    def _load(self) -> None:
        directory = self.run_dir / "checkpoints" / "rank0"
        if not directory.is_dir():
            raise RunDirectoryError(f"cannot resume {self.run_dir}: it has no checkpoint ({directory})")
        self.model.load_state_dict(load_state(directory, "model"))
        trainer = load_state(directory, "trainer")
        self.optimizer.load_state_dict(trainer["optimizer"])
        if "tokenizer_optimizer" in trainer:  # absent from runs recorded before the tokenizer phase
            self.tokenizer_optimizer.load_state_dict(trainer["tokenizer_optimizer"])
        self.counters = {
            "updates": int(trainer["counters"]["updates"]),
            "seconds": float(trainer["counters"]["seconds"]),
        }
        self.train.rng.bit_generator.state = json.loads(trainer["sampler"])
        restore_global_random_state(trainer["rng"])

    # --- training ------------------------------------------------------------------------------

    def fit(self) -> None:
        config = self.config
        self.model.train()
        session = time.perf_counter()
        base = self.counters["seconds"]
        averaged: dict[str, list[float]] = {}
        with (self.run_dir / "metrics.jsonl").open("a") as log:
            while self.counters["updates"] < config.updates:
                elapsed = base + time.perf_counter() - session
                if config.minutes > 0 and elapsed >= config.minutes * 60:
                    break
                # The tokenizer's updates see B x T frames drawn one by one (IRIS samples its
                # tokenizer's frames so): windows' frames repeat the same scene.
                tokenizer_phase = self.counters["updates"] < config.tokenizer_updates
                shape = (
                    (config.batch_size * config.length, 1) if tokenizer_phase else (config.batch_size, config.length)
                )
                batch, captions = self.train.sample(*shape)
                metrics = self.step(batch, captions)
                self.counters["updates"] += 1
                for name, value in metrics.items():
                    averaged.setdefault(name, []).append(float(value))
                if self.counters["updates"] % config.log_every == 0:
                    line = {"step": self.counters["updates"], "time": round(elapsed, 1)}
                    line.update({name: float(np.mean(values)) for name, values in averaged.items()})
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    averaged = {}
                if self.counters["updates"] % config.checkpoint_every == 0:
                    self.counters["seconds"] = base + time.perf_counter() - session
                    self.save()
        self.counters["seconds"] = base + time.perf_counter() - session
        self.save()
        self.model.eval()

    def step(self, batch, captions: list[list[str]]) -> dict[str, torch.Tensor]:
        """One update: the tokenizer alone for the first `tokenizer_updates` (dead codes
        restarted), then the transformer on the frozen tokenizer's tokens (with none, both jointly)."""
        config, model, update = self.config, self.model, self.counters["updates"]
        if update < config.tokenizer_updates:
            model.tokenizer.quantizer.dead_code_threshold = model.config.dead_code_threshold
            frames = model.frames(batch.obs, ("B", "T"), {})
            loss, terms, quantized, _ = model.tokenizer_loss(frames)
            optimizer, parameters, settings = (
                self.tokenizer_optimizer,
                model.tokenizer.parameters(),
                config.tokenizer_optimizer,
            )
            metrics = {f"loss/{name}": value.detach() for name, value in terms.items()} | quantized.metrics("vq")
        else:
            staged = config.tokenizer_updates > 0
            if staged:  # no restart may change what a token means under the transformer
                model.tokenizer.quantizer.dead_code_threshold = 0.0
            loss, metrics = model.loss_terms(batch, batch_text(captions, self.table), tokenizer=not staged)
            optimizer, parameters, settings = self.optimizer, model.parameters(), config.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clipped_step(optimizer, parameters, settings, update)
        return metrics

    # --- measures ------------------------------------------------------------------------------

    @torch.no_grad()
    def measure(self) -> dict[str, Any]:
        config, model = self.config, self.model.eval()
        validation = [self.valid.sample(config.batch_size, config.length) for _ in range(4)]
        losses = {}
        names = {None: "text+actions", "text": "actions only", "action": "text only", "both": "unconditional"}
        for drop, name in names.items():
            values = [
                model.loss(batch, batch_text(captions, self.table), drop)[1]["wm/token_nll"]
                for batch, captions in validation
            ]
            losses[name] = float(np.mean(values))

        # The probe on real held-out moves (movement captions only).
        hits = []
        for episode, steps in zip(self.valid.episodes[:20], self.valid.captions[:20]):
            moves, truth = probe_moves(episode["image"]), np.array(steps[1:], dtype=object)
            chosen = np.isin(truth, MOVES)
            hits += (moves[chosen] == truth[chosen]).tolist()
        # The tokenizer's share: held-out frames whose reconstruction still shows the agent.
        frames = np.concatenate([episode["image"] for episode in self.valid.episodes])[::3]
        tokens, _ = model.tokenize(torch.as_tensor(frames))
        reconstructions = model.decode({"tokens": tokens})["image"].numpy()
        drawn = float(np.isfinite(agent_centre(reconstructions)).all(-1).mean())
        fidelity = text_fidelity(model, self.valid, self.table, config.starts, config.steps, config.seed)
        actions = action_fidelity(model, self.valid, self.table, config.starts, config.steps, config.seed)
        windows, captions = self.valid.sample(16, min(9, model.context))
        controllability = evaluate_suite(
            TextPrompted(model, batch_text([[row[0]] for row in captions], self.table)[:, 0]),
            windows,
            "controllability",
            SuiteSettings(context=3),
        )
        share = {
            move: float(np.mean([caption == move for steps in self.valid.captions for caption in steps[1:]]))
            for move in MOVES
        }
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "torch": torch.__version__,
            "settings": self.describe()["pipeline"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "updates": self.counters["updates"],
            "training_seconds": round(self.counters["seconds"], 1),
            "train_steps": sum(len(episode["reward"]) for episode in self.train.episodes),
            "validation_token_loss": losses,
            "probe_accuracy_on_real_moves": float(np.mean(hits)) if hits else None,
            "agent_in_reconstructions": drawn,
            "text_fidelity": fidelity,
            "action_fidelity": actions,
            "caption_share_in_validation": share,
            "controllability": {
                key: controllability.get(key) for key in ("mean_delta_psnr", "mean_latent_delta_db", "defined")
            },
        }


@torch.no_grad()
def text_fidelity(
    model: TokenWorldModel, valid: CaptionedDataset, table: dict[str, torch.Tensor], starts: int, steps: int, seed: int
) -> dict[str, Any]:
    """Per guidance scale: agreement of the probe's reading of generated moves with the prompt,
    the random-caption baseline (agreement with a movement caption drawn at random per clip),
    and the share of generated frames that show an agent at all."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(valid.episodes), starts, replace=len(valid.episodes) < starts)
    first = np.stack([valid.episodes[index]["image"][:1] for index in chosen])  # (S, 1, H, W, 3)
    action_size = model.action_size
    result = {}
    for scale in GUIDANCE_SCALES:
        agreement, baseline, visible, per_prompt = [], [], [], {}
        for prompt in MOVES:
            _, last = model.observe(
                {"image": first},
                np.zeros((starts, 1, action_size), np.float32),
                np.ones((starts, 1), bool),
                text=table[prompt].expand(starts, -1),
            )
            trajectory = model.imagine(
                last,
                np.zeros((starts, steps, action_size), np.float32),
                steps,
                guidance_scale=scale,
                use_actions=False,
                generator=torch.Generator().manual_seed(seed),
            )
            generated = to_pixels(model.decode(trajectory.states)["image"])
            frames = np.concatenate([first, generated.numpy()], 1)  # both uint8
            moves = probe_moves(frames)  # (S, L)
            random_captions = rng.choice(np.array(MOVES, dtype=object), size=moves.shape)
            per_prompt[prompt] = float((moves == prompt).mean())
            agreement.append(per_prompt[prompt])
            baseline.append(float((moves == random_captions).mean()))
            visible.append(float((moves != "no agent").mean()))
        result[str(scale)] = {
            "agreement": float(np.mean(agreement)),
            "random_caption_baseline": float(np.mean(baseline)),
            "moves_with_agent_visible": float(np.mean(visible)),
            "per_prompt": per_prompt,
        }
    return result


def action_fidelity(
    model: TokenWorldModel, valid: CaptionedDataset, table: dict[str, torch.Tensor], starts: int, steps: int, seed: int
) -> dict[str, Any]:
    """GAIA-1's action fidelity read by the same probe as `text_fidelity`: clips generated from
    held-out first frames under one constant action per move (the recorder's direction at its mean
    strength 0.8) with the text dropped (guidance 0, the text-free pass of classifier-free
    guidance; the prompt "stay still" is what is dropped), and the agreement of the probed moves
    with the action's move against a random-move baseline."""
    if model.discrete or model.action_size != 2:
        raise WmlabError(
            f"action fidelity needs two-rooms' 2-D continuous moves; this model takes {model.action_size} actions"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(valid.episodes), starts, replace=len(valid.episodes) < starts)
    first = np.stack([valid.episodes[index]["image"][:1] for index in chosen])  # (S, 1, H, W, 3)
    neutral = torch.as_tensor(table["stay still"]).float().expand(starts, -1)
    agreement, baseline, visible, per_move = [], [], [], {}
    for move in MOVES:
        action = np.asarray(MOVE_DIRECTIONS[move], np.float32) * 0.8
        _, last = model.observe(
            {"image": first}, np.zeros((starts, 1, 2), np.float32), np.ones((starts, 1), bool), text=neutral
        )
        trajectory = model.imagine(
            last,
            np.broadcast_to(action, (starts, steps, 2)).copy(),
            steps,
            guidance_scale=0.0,
            generator=torch.Generator().manual_seed(seed),
        )
        generated = to_pixels(model.decode(trajectory.states)["image"])
        moves = probe_moves(np.concatenate([first, generated.numpy()], 1))  # (S, L)
        random_moves = rng.choice(np.array(MOVES, dtype=object), size=moves.shape)
        per_move[move] = float((moves == move).mean())
        agreement.append(per_move[move])
        baseline.append(float((moves == random_moves).mean()))
        visible.append(float((moves != "no agent").mean()))
    return {
        "agreement": float(np.mean(agreement)),
        "random_move_baseline": float(np.mean(baseline)),
        "moves_with_agent_visible": float(np.mean(visible)),
        "per_move": per_move,
    }


class TextPrompted:
    """The model with a fixed text prompt (B, Dt) put into every state it filters, and imagining at
    a fixed guidance scale, so that the evaluation suites (which know nothing of text or guidance)
    can run on a text-conditioned model."""

    def __init__(self, model: TokenWorldModel, text: torch.Tensor, guidance_scale: float = 1.0):
        self.model, self.text, self.guidance_scale = model, text, guidance_scale
        self.can_decode = True

    def __getattr__(self, name):
        return getattr(self.model, name)

    def initial(self, batch_size: int):
        return self.model.with_text(self.model.initial(batch_size), self.text[:batch_size])

    def observe(self, obs, action, is_first, state=None):
        return self.model.observe(obs, action, is_first, state, text=self.text[: np.shape(is_first)[0]])

    def imagine(self, state, actions, horizon=None, **kwargs):
        kwargs.setdefault("guidance_scale", self.guidance_scale)
        return self.model.imagine(state, actions, horizon, **kwargs)

    def decode(self, state):
        return self.model.decode(state)


def pipeline_command(argv: list[str]) -> int:
    config = tyro.cli(GaiaConfig, args=argv, prog="wmlab pipeline gaia", description=__doc__.split("\n\n")[0])
    resume = config.resume is not None
    if resume:
        path = Path(config.resume) / CONFIG_FILE
        if not path.is_file():
            raise RunDirectoryError(f"cannot resume {config.resume}: {path} is missing")
        saved = json.loads(path.read_text())
        if saved.get("kind") != KIND:
            raise RunDirectoryError(f"{config.resume} is not a GAIA run ({path} says kind {saved.get('kind')!r})")
        names = {setting.name for setting in fields(GaiaConfig)}
        known = {key: value for key, value in saved["pipeline"].items() if key in names | set(GaiaConfig.moved_fields)}
        known = {**GaiaConfig.introduced, **known}
        settings = from_dict(GaiaConfig, known)
        kept = {name: getattr(settings, name) for name in names - {"updates", "minutes", "threads"}}
        kept.update(
            run_dir=Path(config.resume),
            resume=Path(config.resume),
            dataset=settings.dataset and Path(settings.dataset),
        )
        config = replace(config, **kept)
    run = GaiaRun(config, resume=resume)
    print(
        f"data: {len(run.train.episodes)} training / {len(run.valid.episodes)} held-out episodes; training from update {run.counters['updates']}"
    )
    run.fit()
    print(f"trained: {run.counters['updates']} updates, {run.counters['seconds']:.0f} s; measuring")
    result = run.measure()
    (run.run_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {key: result[key] for key in ("updates", "validation_token_loss", "text_fidelity", "controllability")}
        )
    )
    return 0


# ----------------------------------------------------------------------------------------------
# wmlab generate on a GAIA run


def is_gaia_run(run_dir: str | Path) -> bool:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == KIND
    except ValueError:
        return False


def load_gaia_model(run_dir: str | Path) -> tuple[dict[str, Any], TokenWorldModel]:
    """(the run's config.json, its model with the latest checkpoint's weights)."""
    run_dir = Path(run_dir)
    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    directory = run_dir / "checkpoints" / "rank0"
    if not directory.is_dir():
        raise RunDirectoryError(f"{run_dir} has no checkpoint yet ({directory} is missing)")
    observation_space, action_space = spaces_of(Path(saved["train_dataset"]))
    model = TokenWorldModel(from_dict(TokenWorldModelConfig, saved["model"]), observation_space, action_space)
    model.load_state_dict(load_state(directory, "model"))
    return saved, model.eval()


@dataclass(frozen=True)
class TextGeneration:
    """What `wmlab generate` asks of a GAIA run."""

    text: str
    """The prompt, e.g. "move left"."""
    actions: str = "none"
    """none (text alone: the null action), random (uniform in the action box), recorded (the held-out episode's)."""
    steps: int = 12
    guidance_scale: float = 3.0
    episode: int = 0
    seed: int = 0
    out: Path = Path("generated.mp4")
    fps: int = 8
    scale: int = 4
    columns: int = 10


def check_prompt(text: str | None) -> str:
    """The prompt, stripped; an empty or blank one is refused."""
    if text is None or not str(text).strip():
        raise WmlabError('--text is empty: give the prompt as words, e.g. --text "move left"')
    return str(text).strip()


@torch.no_grad()
def generate(run_dir: str | Path, request: TextGeneration) -> dict[str, Any]:
    """Generate `steps` frames from a held-out first frame with the prompt (and actions), write
    the MP4, the contact sheet and a JSON beside them; returns the JSON's content."""

    prompt = check_prompt(request.text)
    if request.actions not in ("none", "random", "recorded"):
        raise WmlabError(f"--actions must be none, random or recorded for a GAIA run, got {request.actions!r}")
    saved, model = load_gaia_model(run_dir)
    valid = load_captioned(saved["valid_dataset"])
    if not 0 <= request.episode < len(valid.episodes):
        raise WmlabError(f"--episode {request.episode}: the held-out set holds {len(valid.episodes)} episodes")
    episode = valid.episodes[request.episode]
    embedding = load_text_encoder().encode([prompt])  # (1, Dt)
    _, state = model.observe(
        {"image": episode["image"][None, :1]},
        np.zeros((1, 1, model.action_size), np.float32),
        np.ones((1, 1), bool),
        text=embedding,
    )
    generator = np.random.default_rng(request.seed)
    real = None
    if request.actions == "recorded":
        available = len(episode["reward"]) - 1
        if request.steps > available:
            raise WmlabError(f"the episode has {available} recorded actions, fewer than --steps {request.steps}")
        actions = episode["action"][None, 1 : 1 + request.steps].astype(np.float32)
        real = episode["image"][1 : 1 + request.steps]
    elif request.actions == "random":
        actions = generator.uniform(-1, 1, (1, request.steps, model.action_size)).astype(np.float32)
    else:
        actions = np.zeros((1, request.steps, model.action_size), np.float32)
    begin = time.perf_counter()
    trajectory = model.imagine(
        state,
        actions,
        request.steps,
        guidance_scale=request.guidance_scale,
        use_actions=request.actions != "none",
        generator=torch.Generator().manual_seed(request.seed),
    )
    seconds = time.perf_counter() - begin
    generated = to_pixels(model.decode(trajectory.states)["image"][0]).numpy()
    out = Path(request.out)
    write_video(out, generated, real, request.fps, request.scale)
    write_contact_sheet(out.with_suffix(".png"), generated, real, request.columns, request.scale)
    moves = probe_moves(np.concatenate([episode["image"][:1], generated]))
    summary = {
        "run": str(run_dir),
        "kind": KIND,
        "text": prompt,
        "actions": request.actions,
        "guidance_scale": request.guidance_scale,
        "steps": request.steps,
        "seed": request.seed,
        "frames_per_second": request.steps / max(seconds, 1e-9),
        "probe_moves": moves.tolist(),
        "probe_agreement_with_prompt": float((moves == prompt).mean()),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def generate_command(command: Any) -> int:
    """`wmlab generate` (wmlab.eval.generation.GenerateCommand) on a GAIA run."""
    if not command.text:
        raise WmlabError(f'{command.run_dir} is a text-conditioned GAIA run: give a prompt, e.g. --text "move left"')
    request = TextGeneration(
        text=command.text,
        actions=command.actions,
        steps=command.steps,
        guidance_scale=3.0 if command.guidance is None else command.guidance,
        episode=max(command.episode, 0),
        seed=command.seed,
        out=Path(command.out),
        fps=command.fps,
        scale=command.scale,
        columns=command.columns,
    )
    summary = generate(command.run_dir, request)
    print(
        f"{request.steps} frames from {request.text!r} at guidance {request.guidance_scale}, "
        f"{summary['frames_per_second']:.1f} frames per second; probe agreement {summary['probe_agreement_with_prompt']:.2f}"
    )
    print(f"written: {request.out}, {request.out.with_suffix('.png')}, {request.out.with_suffix('.json')}")
    return 0
