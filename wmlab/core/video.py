"""Animated GIFs of frames: the one writer behind every videos/*.gif of a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_gif(path: Path, frames: Sequence[np.ndarray], milliseconds_per_frame: int = 50) -> None:
    """frames: T arrays (H, W, 3) uint8, written as a looping GIF (parents created); nothing when T = 0.

    `milliseconds_per_frame` is imageio's v3 `duration` (milliseconds; the v2 API's seconds are gone
    from its GIF plugin, where 0.1 would mean a tenth of a millisecond).
    """
    import imageio.v3 as imageio  # optional heavy dependency, imported when a video is written

    if len(frames) == 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, np.stack(list(frames)), duration=milliseconds_per_frame, loop=0)
