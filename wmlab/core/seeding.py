"""Seeded blocks that leave the caller's random state as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global generator seeded to `seed`, then restore the CPU generator's
    state from before the block: a model built (or a rollout sampled) inside draws the same numbers
    for the same seed, whatever ran before, and draws nothing from the caller's stream. CUDA
    generators are seeded (torch.manual_seed seeds every device) but not restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
