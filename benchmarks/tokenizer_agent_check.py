"""Does the token model's tokenizer draw two-rooms' agent? The tokenizer alone (the `cpu` size,
conv or patch encoder, Adam 1e-3, foreground weight 20, dead codes restarted onto the
worst-represented encodings) on the frames of a `wmlab pipeline gaia` run's captioned data; every
150 updates, the share of held-out reconstructions in which the agent's colour is found (the
probe of GAIA's text fidelity reads moves from it), PSNR and codes in use.

    python benchmarks/tokenizer_agent_check.py --data RUN_DIR/data --encoder patch --updates 600
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from gymnasium import spaces

from wmlab.data.captions import load_captioned
from wmlab.models.tokens import SIZES, TokenLossScales, TokenWorldModel, TokenWorldModelConfig
from wmlab.pipelines.gaia import agent_centre


def agent_drawn_share(frames: np.ndarray) -> float:
    """Share of frames (N, H, W, 3) in which agent-coloured pixels are found."""
    return float(np.isfinite(agent_centre(frames)).all(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a `wmlab pipeline gaia` run's data folder (train/, valid/)")
    parser.add_argument("--encoder", default="patch", choices=("conv", "patch"))
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    frames = np.concatenate([episode["image"] for episode in load_captioned(f"{arguments.data}/train").episodes])
    held_out = np.concatenate([episode["image"] for episode in load_captioned(f"{arguments.data}/valid").episodes])
    held_out = held_out[::3]
    scales = TokenLossScales(foreground=20.0)
    config = TokenWorldModelConfig(size=SIZES["cpu"], encoder=arguments.encoder, restart_on="error", loss_scales=scales)
    observation_space = spaces.Dict({"image": spaces.Box(0, 255, frames.shape[1:], np.uint8)})
    model = TokenWorldModel(config, observation_space, spaces.Discrete(4))
    optimizer = torch.optim.Adam(model.tokenizer.parameters(), lr=1e-3)
    rng = np.random.default_rng(arguments.seed)
    begin = time.perf_counter()
    for update in range(1, arguments.updates + 1):
        chosen = frames[rng.integers(0, len(frames), arguments.batch_size)]
        batch = torch.as_tensor(chosen).permute(0, 3, 1, 2).float() / 255
        model.tokenizer.train()
        terms, _, _ = model.tokenizer_terms(batch)
        loss = sum(getattr(scales, name) * value for name, value in terms.items())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.tokenizer.parameters(), 10.0)
        optimizer.step()
        if update % 150 == 0:
            model.eval()
            with torch.no_grad():
                tokens, _ = model.tokenize(held_out)
                reconstructions = model.decode({"tokens": tokens})["image"].numpy()
            error = ((reconstructions - held_out / 255.0) ** 2).reshape(len(held_out), -1).mean(-1)
            row = {
                "encoder": arguments.encoder,
                "update": update,
                "seconds": round(time.perf_counter() - begin),
                "agent_drawn": round(agent_drawn_share(reconstructions), 3),
                "agent_in_real": round(agent_drawn_share(held_out), 3),
                "psnr": round(float((-10 * np.log10(np.maximum(error, 1e-10))).mean()), 2),
                "codes": int(tokens.unique().numel()),
                "frames": len(held_out),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
