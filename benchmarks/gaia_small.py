"""GAIA-1 in small on captioned two-rooms: validation token loss with and without conditioning,
text fidelity at guidance scales, and action fidelity (delta-PSNR), at a CPU budget.

    OMP_NUM_THREADS=1 python benchmarks/gaia_small.py --out runs/gaia-small --minutes 12 --seed 0

1. Records (or reuses) captioned two-rooms episodes (wmlab.data.captions): `--train-episodes`
   from seed 0 and `--valid-episodes` from seed 100000 (held-out layouts).
2. Trains the token model (size `--size`, continuous actions, symlog two-hot reward, a text
   token per step from all-MiniLM-L6-v2's embedding of the step's caption; text and actions each
   dropped with probability 0.15 for classifier-free guidance) for `--minutes` of wall clock on
   B x T windows, AdamW.
3. Validation token loss (cross-entropy of the next frame's tokens, nats per token) on fixed
   held-out windows: conditioned on text and actions, on actions only, on text only, and with
   both dropped (the unconditional model).
4. Text fidelity: from held-out start frames, generate `--steps` frames from each movement
   prompt ("move left/right/up/down") with the actions dropped, at guidance scales 0 (the
   unconditional model: the baseline), 1, 3, 7. A fixed probe reads the agent's move from each
   pair of generated frames (the centroid of the agent-coloured pixels; its accuracy on real
   held-out steps is reported beside it) and we count agreement with the prompt.
5. Action fidelity: `wmlab.eval` controllability (delta-PSNR of frames generated with the real
   against shuffled actions) on held-out windows.
Writes OUT/result.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces

from wmlab.data.captions import MOVES, caption_step, load_captioned, record_captioned_two_rooms
from wmlab.envs.two_rooms import AGENT_RGB
from wmlab.eval.suites import SuiteSettings, evaluate_suite
from wmlab.models.tokens import TokenWorldModel, TokenWorldModelConfig
from wmlab.nn.text import load_text_encoder

IMAGES = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)
STEP_PIXELS = 0.05 * 64  # two-rooms' max_step in pixels


def agent_centre(frames: np.ndarray) -> np.ndarray:
    """Centroids (..., 2) as (x, y up) in arena units of the agent-coloured pixels of frames
    (..., 64, 64, 3) in [0, 1] or uint8; NaN where no pixel is close to the agent's colour."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.max() > 1.5:
        frames = frames / 255.0
    target = np.array(AGENT_RGB, np.float32) / 255.0
    close = np.abs(frames - target).max(-1) < 0.2  # (..., 64, 64)
    rows, columns = np.arange(64, dtype=np.float32), np.arange(64, dtype=np.float32)
    count = close.sum((-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        y_pixels = (close * rows[:, None]).sum((-1, -2)) / count
        x_pixels = (close * columns[None, :]).sum((-1, -2)) / count
    # Row 0 is the top of the frame; the arena's y points up.
    return np.stack([(x_pixels + 0.5) / 64, 1 - (y_pixels + 0.5) / 64], -1)


def probe_moves(frames: np.ndarray) -> np.ndarray:
    """The caption of each consecutive pair of frames (..., L, 64, 64, 3) -> (..., L - 1) strings,
    from the agent's centroids (door and goal are not read: only the movement captions)."""
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
    return torch.stack([torch.stack([table[caption] for caption in row]) for row in captions])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gaia-small")
    parser.add_argument("--size", default="cpu")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-episodes", type=int, default=300)
    parser.add_argument("--valid-episodes", type=int, default=40)
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    out = Path(arguments.out)
    started = time.time()
    for name, episodes, seed in (("train", arguments.train_episodes, 0), ("valid", arguments.valid_episodes, 100_000)):
        if not (out / name / "captions.json").is_file():
            record_captioned_two_rooms(out / name, episodes=episodes, seed=seed, max_episode_steps=40, force=True)
    train, valid = (
        load_captioned(out / "train", seed=arguments.seed),
        load_captioned(out / "valid", seed=arguments.seed + 1),
    )
    encoder = load_text_encoder()
    vocabulary = sorted(set(train.vocabulary) | set(valid.vocabulary))
    table = dict(zip(vocabulary, encoder.encode(vocabulary)))
    recorded = time.time() - started

    config = TokenWorldModelConfig(
        size=arguments.size,
        continuous_actions=True,
        reward_head="twohot",
        text_size=encoder.dim,
        text_dropout=0.15,
        action_dropout=0.15,
        guided="text",
    )
    model = TokenWorldModel(config, IMAGES, ACTIONS)
    optimiser = torch.optim.AdamW(model.parameters(), lr=arguments.lr, weight_decay=0.01)
    validation = [valid.sample(arguments.batch, arguments.length) for _ in range(4)]

    def validate() -> dict[str, float]:
        model.eval()
        result = {}
        with torch.no_grad():
            for drop in (None, "text", "action", "both"):
                losses = [
                    model.loss(batch, batch_text(captions, table), drop)[1]["loss/tokens"]
                    for batch, captions in validation
                ]
                result[
                    {None: "text+actions", "text": "actions only", "action": "text only", "both": "unconditional"}[drop]
                ] = float(np.mean(losses))
        model.train()
        return result

    curve, updates, training_started = [], 0, time.time()
    while time.time() - training_started < arguments.minutes * 60:
        batch, captions = train.sample(arguments.batch, arguments.length)
        loss, metrics = model.loss_terms(batch, batch_text(captions, table))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        updates += 1
        if updates % 50 == 0:
            curve.append(
                {
                    "update": updates,
                    "seconds": round(time.time() - training_started, 1),
                    "train_tokens": float(metrics["loss/tokens"]),
                    "train_psnr": float(metrics["wm/reconstruction_psnr"]),
                }
            )
            print(json.dumps(curve[-1]), flush=True)
    training_seconds = time.time() - training_started
    model.eval()
    losses = validate()

    # Text fidelity: generation from text alone, from held-out first frames.
    rng = np.random.default_rng(arguments.seed)
    episodes = [
        valid.episodes[index]
        for index in rng.choice(len(valid.episodes), arguments.starts, replace=len(valid.episodes) < arguments.starts)
    ]
    starts = np.stack([episode["image"][:1] for episode in episodes])  # (S, 1, 64, 64, 3)
    # The probe against the true captions of real held-out steps (movement captions only).
    hits = []
    for episode, steps in zip(valid.episodes[:10], valid.captions[:10]):
        moves, truth = probe_moves(episode["image"]), np.array(steps[1:], dtype=object)
        hits += (moves[np.isin(truth, MOVES)] == truth[np.isin(truth, MOVES)]).tolist()
    probe_accuracy = float(np.mean(hits)) if hits else None
    fidelity = {}
    with torch.no_grad():
        for scale in (0.0, 1.0, 3.0, 7.0):
            agreement = []
            for prompt in MOVES:
                _, last = model.observe(
                    {"image": starts},
                    np.zeros((len(starts), 1, 2), np.float32),
                    np.ones((len(starts), 1), bool),
                    text=table[prompt].expand(len(starts), -1),
                )
                generator = torch.Generator().manual_seed(arguments.seed)
                trajectory = model.imagine(
                    last,
                    np.zeros((len(starts), arguments.steps, 2), np.float32),
                    arguments.steps,
                    guidance_scale=scale,
                    use_actions=False,
                    generator=generator,
                )
                frames = np.concatenate([starts, model.decode(trajectory.states)["image"].numpy()], 1)
                moves = probe_moves(frames)
                agreement.append(float((moves == prompt).mean()))
            fidelity[str(scale)] = {"agreement": float(np.mean(agreement)), "per_prompt": dict(zip(MOVES, agreement))}
            print(json.dumps({"scale": scale, **fidelity[str(scale)]}), flush=True)
    share = {
        move: float(np.mean([caption == move for steps in valid.captions for caption in steps[1:]])) for move in MOVES
    }

    # Action fidelity on held-out windows (text: each window's own first caption as the prompt).
    windows, captions = valid.sample(16, 9)
    controllability = evaluate_suite(
        _TextPrompted(model, batch_text([[row[0]] for row in captions], table)[:, 0]),
        windows,
        "controllability",
        SuiteSettings(context=3),
    )

    result = {
        "command": "python benchmarks/gaia_small.py "
        + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(arguments).items()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "size": arguments.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "updates": updates,
        "training_seconds": round(training_seconds, 1),
        "recording_seconds": round(recorded, 1),
        "train_steps": sum(len(episode["reward"]) for episode in train.episodes),
        "validation_token_loss": losses,
        "curve": curve,
        "probe_accuracy_on_real_moves": probe_accuracy,
        "text_fidelity": fidelity,
        "caption_share_in_validation": share,
        "controllability": {
            key: controllability.get(key) for key in ("mean_delta_psnr", "mean_latent_delta_db", "defined")
        },
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


class _TextPrompted:
    """The model with a fixed text prompt (B, Dt) put into every state it filters, so the
    evaluation suites (which know nothing of text) can run on a text-conditioned model."""

    def __init__(self, model: TokenWorldModel, text: torch.Tensor):
        self.model, self.text = model, text
        self.can_decode = True

    def __getattr__(self, name):
        return getattr(self.model, name)

    def initial(self, batch_size: int):
        return self.model.with_text(self.model.initial(batch_size), self.text[:batch_size])

    def observe(self, obs, action, is_first, state=None):
        return self.model.observe(obs, action, is_first, state, text=self.text[: np.shape(is_first)[0]])

    def imagine(self, state, actions, horizon=None, **kwargs):
        return self.model.imagine(state, actions, horizon, **kwargs)

    def decode(self, state):
        return self.model.decode(state)


if __name__ == "__main__":
    main()
