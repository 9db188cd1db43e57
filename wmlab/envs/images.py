"""Frame resizing shared by the pixel adapters (Atari, gymnasium environments seen through render)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def area_resizer(size: int, channels: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A function that shrinks a frame to (size, size) by area averaging, and its backend's name."""
    try:
        import cv2
    except ImportError:
        from PIL import Image

        def resize(frame: np.ndarray) -> np.ndarray:
            return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))

        return resize, "pillow-box"

    def resize_cv2(frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)

    return resize_cv2, "cv2-area"
