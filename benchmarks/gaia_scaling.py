"""GAIA-1's scaling claim in small (issue 26, benchmark (d)): validation token loss of three
transformer sizes trained for the same number of updates on the same frozen tokens.

GAIA-1 (Hu et al. 2023, arXiv:2309.17080, its scaling section) fits the validation cross-entropy
of its world model against compute for models of growing size, all reading the tokens of one
fixed image tokenizer. In small, on `wmlab pipeline gaia`'s captioned two-rooms data:

1. data, text table and a `cpu` token model come from `wmlab.pipelines.gaia.GaiaRun` (300
   training episodes from seed 0, 40 held-out ones from seed 100000);
2. the tokenizer alone learns for `--tokenizer-updates` updates (Adam, `--tokenizer-lr`,
   the pipeline's foreground weighting, dead codes restarted onto the worst-represented
   encodings at usage decay `--tokenizer-usage-decay`), then is frozen and shared: every size
   sees the same tokens, so their token losses are comparable;
3. each size (layers x width, 4 heads, the `cpu` context of 10 steps) trains from the same seed on
   the same sequence of batches (B x T windows, text and actions each dropped with probability
   0.15), AdamW 3e-4, for `--updates` updates; every `--eval-every` updates its token loss on the
   same held-out windows (text + actions) is written down, with its wall clock.

    python benchmarks/gaia_scaling.py run --out OUT
    python benchmarks/gaia_scaling.py plot OUT/result.json --figure docs/figures/gaia_scaling.png

OUT/result.json holds the settings, the tokenizer's measures and, per size, the parameter counts,
the curve and the seconds it took. Same updates, not same wall clock: the machine this ran on is
shared, so wall clock would measure the neighbours' load as much as the models.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wmlab.models.tokens import TokenWorldModel
from wmlab.pipelines.gaia import GaiaConfig, GaiaRun, agent_centre, batch_text, model_config, spaces_of


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """ "3x128,3x256,4x384" -> [(layers, width), ...]."""
    sizes = []
    for item in text.split(","):
        layers, width = item.lower().split("x")
        sizes.append((int(layers), int(width)))
    return sizes


def train_tokenizer(run: GaiaRun, updates: int, learning_rate: float, batch: int, length: int) -> dict:
    """The shared tokenizer: `updates` Adam steps on the frames of B x T training windows."""
    model = run.model
    optimizer = torch.optim.Adam(model.tokenizer.parameters(), lr=learning_rate)
    model.tokenizer.train()
    begin, psnr = time.perf_counter(), []
    for _ in range(updates):
        windows, _ = run.train.sample(batch, length)
        frames = model.frames(windows.obs, ("B", "T"), {})
        terms, _, reconstruction = model.tokenizer_terms(frames)
        loss = sum(getattr(model.config.loss_scales, name) * terms[name] for name in terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.tokenizer.parameters(), 10.0)
        optimizer.step()
        with torch.no_grad():
            error = (reconstruction.clamp(0, 1) - frames).pow(2).flatten(1).mean(-1).clamp_min(1e-10)
            psnr.append(float((-10 * error.log10()).mean()))
    model.tokenizer.eval()
    seconds = time.perf_counter() - begin
    # How well the frozen tokenizer draws the held-out frames, and whether it draws the agent.
    frames = np.concatenate([episode["image"] for episode in run.valid.episodes[:20]])  # (N, H, W, 3)
    with torch.no_grad():
        tokens, _ = model.tokenize(frames)
        drawn = model.decode({"tokens": tokens})["image"].clamp(0, 1).numpy()
    real = frames.astype(np.float32) / 255
    error = ((drawn - real) ** 2).reshape(len(real), -1).mean(-1).clip(1e-10)
    usage = len(np.unique(tokens.numpy())) / model.tokenizer.quantizer.codebook_size
    return {
        "updates": updates,
        "seconds": round(seconds, 1),
        "train_psnr_last_25": float(np.mean(psnr[-25:])) if psnr else None,
        "valid_psnr": float((-10 * np.log10(error)).mean()),
        "valid_frames": len(real),
        "agent_visible_real": float(np.mean(~np.isnan(agent_centre(real)).any(-1))),
        "agent_visible_reconstructed": float(np.mean(~np.isnan(agent_centre(drawn)).any(-1))),
        "valid_code_usage": usage,
    }


@torch.no_grad()
def validation_loss(model: TokenWorldModel, windows: list, table: dict) -> float:
    """Mean token cross-entropy (nats per token) over the fixed held-out windows, text + actions."""
    model.eval()
    values = [model.loss(batch, batch_text(captions, table))[1]["loss/tokens"] for batch, captions in windows]
    model.train()
    return float(np.mean(values))


def train_size(run: GaiaRun, layers: int, width: int, args, windows: list, sampler_state: dict) -> dict:
    """One transformer size on the frozen tokenizer: its curve of validation token loss."""
    torch.manual_seed(args.seed)
    config = model_config(run.config, run.encoder.dim)
    config = replace(config, size=replace(config.size, layers=layers, width=width, heads=4))
    observation_space, action_space = spaces_of(run.train_dir)
    model = TokenWorldModel(config, observation_space, action_space)
    model.tokenizer.load_state_dict(run.model.tokenizer.state_dict())
    model.tokenizer.requires_grad_(False)
    trained = [p for name, p in model.named_parameters() if not name.startswith("tokenizer.")]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=0.01)
    run.train.rng.bit_generator.state = sampler_state  # every size sees the same batches
    curve = [{"updates": 0, "seconds": 0.0, "valid_token_loss": validation_loss(model, windows, run.table)}]
    model.train()
    begin, train_losses = time.perf_counter(), []
    for update in range(1, args.updates + 1):
        batch, captions = run.train.sample(args.batch, args.length)
        loss, metrics = model.loss_terms(batch, batch_text(captions, run.table), tokenizer=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 10.0)
        optimizer.step()
        train_losses.append(float(metrics["loss/tokens"]))
        if update % args.eval_every == 0 or update == args.updates:
            seconds = time.perf_counter() - begin
            point = {
                "updates": update,
                "seconds": round(seconds, 1),
                "valid_token_loss": validation_loss(model, windows, run.table),
                "train_token_loss": float(np.mean(train_losses[-args.eval_every :])),
            }
            curve.append(point)
            print(json.dumps({"layers": layers, "width": width, **point}), flush=True)
    return {
        "layers": layers,
        "width": width,
        "heads": 4,
        "transformer_parameters": sum(p.numel() for p in model.transformer.parameters()),
        "parameters_outside_tokenizer": sum(p.numel() for p in trained),
        "curve": curve,
        "seconds": round(time.perf_counter() - begin, 1),
    }


def run_command(args) -> None:
    out = Path(args.out)
    torch.set_num_threads(1)
    config = GaiaConfig(
        run_dir=out / "data_run",
        size="cpu",
        image_size=args.image_size,
        train_episodes=args.train_episodes,
        valid_episodes=args.valid_episodes,
        seed=args.seed,
    )
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / "data_run" / "config.json").unlink(missing_ok=True)  # the recorded episodes are reused
    run = GaiaRun(config)
    # Restarts are harmless before the tokens are frozen, and needed: without them the tokenizer
    # collapsed onto 5 codes and never drew the agent (200 updates, decay 0.99: no code died yet).
    quantizer = run.model.tokenizer.quantizer
    quantizer.usage_decay, quantizer.restart_on = args.tokenizer_usage_decay, args.tokenizer_restart_on
    tokenizer = train_tokenizer(run, args.tokenizer_updates, args.tokenizer_lr, args.batch, args.length)
    print(json.dumps({"tokenizer": tokenizer}), flush=True)
    run.valid.rng = np.random.default_rng(args.seed + 1)
    windows = [run.valid.sample(args.batch, args.length) for _ in range(args.valid_batches)]
    sampler_state = run.train.rng.bit_generator.state
    sizes = [train_size(run, layers, width, args, windows, sampler_state) for layers, width in parse_sizes(args.sizes)]
    result = {
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "settings": {key: value for key, value in vars(args).items() if key != "handler"},
        "train_steps": sum(len(episode["reward"]) for episode in run.train.episodes),
        "valid_windows": args.valid_batches * args.batch,
        "tokenizer": tokenizer,
        "sizes": sizes,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"written: {out / 'result.json'}")


def plot_command(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(Path(args.result).read_text())
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for size in result["sizes"]:
        label = f"{size['layers']} x {size['width']} ({size['transformer_parameters'] / 1e6:.2f} M)"
        curve = size["curve"]
        losses = [p["valid_token_loss"] for p in curve]
        left.plot([p["updates"] for p in curve], losses, marker="o", label=label)
        middle.plot([p["seconds"] for p in curve], losses, marker="o", label=label)
    middle.set_xlabel("training seconds (shared, loaded 2-core CPU; 1 thread)")
    middle.set_ylabel("validation token loss (nats / token)")
    middle.set_title("the same curves against wall clock")
    middle.legend()
    left.set_xlabel("updates (batches of 8 x 8 steps)")
    left.set_ylabel("validation token loss (nats / token)")
    left.set_title("held-out captioned two-rooms, same frozen tokens")
    left.legend()
    parameters = [size["transformer_parameters"] for size in result["sizes"]]
    final = [size["curve"][-1]["valid_token_loss"] for size in result["sizes"]]
    right.plot(parameters, final, marker="o")
    right.set_xscale("log")
    right.set_xticks(parameters, [f"{count / 1e6:.2f} M" for count in parameters])
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("transformer parameters")
    right.set_ylabel(f"validation token loss at {result['sizes'][0]['curve'][-1]['updates']} updates")
    right.set_title("GAIA-1's scaling claim in small")
    figure.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.figure, dpi=120)
    print(f"written: {args.figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the tokenizer, then each size; write OUT/result.json")
    run.add_argument("--out", required=True)
    run.add_argument("--sizes", default="3x128,3x256,4x384", help="layers x width, comma-separated")
    run.add_argument("--updates", type=int, default=300, help="transformer updates of every size")
    run.add_argument("--tokenizer-updates", type=int, default=200)
    run.add_argument("--tokenizer-lr", type=float, default=1e-3)
    run.add_argument("--tokenizer-usage-decay", type=float, default=0.9, help="of the codes' usage (restarts)")
    run.add_argument("--tokenizer-restart-on", default="error", choices=["random", "error"])
    run.add_argument("--learning-rate", type=float, default=3e-4)
    run.add_argument("--batch", type=int, default=8)
    run.add_argument("--length", type=int, default=8)
    run.add_argument("--eval-every", type=int, default=50)
    run.add_argument("--valid-batches", type=int, default=4)
    run.add_argument("--image-size", type=int, default=32)
    run.add_argument("--train-episodes", type=int, default=300)
    run.add_argument("--valid-episodes", type=int, default=40)
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(handler=run_command)
    plot = commands.add_parser("plot", help="the figure of a result.json")
    plot.add_argument("result")
    plot.add_argument("--figure", default="docs/figures/gaia_scaling.png")
    plot.set_defaults(handler=plot_command)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
