"""Video without actions: the training data of latent-action models (Genie, arXiv:2402.15391).

A `VideoDataset` is a list of episodes, each a uint8 array of frames (T, H, W, C), all of one
size. The model is only ever given the frames. Where the source has them, the true actions are
kept apart in `hidden_actions` (one array per episode, row t the action that led to frame t, the
time convention of wmlab.core.types; row 0 a zero action), for one use only: measuring how the
latent actions a model discovers line up with the real controls (wmlab.eval.grounding).

Sources read by `load_video`:

    DIR/manifest.json + DIR/episodes/*.npz      a dataset written by `wmlab record` (with or
                                                without --no-store-actions); frames from the
                                                observation key "image"
    DIR/*.png                                   one video: the PNG files in name order
    DIR/<video>/*.png                           one video per sub-folder of PNG files
    DIR/*.mp4 | *.gif | *.avi | *.webm          one video per file (imageio; MP4 needs the
                                                `video` extra: pip install 'wmlab[video]')
    FILE.mp4 ...                                a single video file

Frames are RGB: grey frames are repeated to 3 channels and an alpha channel is dropped. Every
frame of a dataset must have the same height and width: a video of another size is refused with
an error naming the file and both sizes, unless `size=(H, W)` is given, in which case every
frame is resized to it (PIL, bilinear with antialiasing). A file that cannot be decoded is
refused with an error naming it.

Windows: `sample(batch_size, length)` draws B windows of T frames, each inside one episode, as a
`wmlab.core.types.Batch` (obs {"image": (B, T, H, W, C)}, action None, reward 0, is_first True
where the window starts its episode); `sample_with_actions` returns the hidden actions of the
same windows beside it.

Shape legend: B batch, T time, H, W, C image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wmlab.core.errors import WmlabError
from wmlab.core.types import Batch
from wmlab.data.dataset import load_dataset, read_manifest

VIDEO_SUFFIXES = (".mp4", ".gif", ".avi", ".webm", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png",)


class VideoError(WmlabError):
    """A video is missing, corrupt, empty, or of another frame size than the rest of the dataset."""


@dataclass
class VideoDataset:
    """Episodes of frames (T_i, H, W, C) uint8, with the true actions kept apart where known."""

    frames: list[np.ndarray]
    """One uint8 array (T_i, H, W, C) per episode."""
    hidden_actions: list[np.ndarray] | None = None
    """One array (T_i, ...) per episode (row t led to frame t), or None: never shown to a model."""
    sources: list[str] = field(default_factory=list)
    """Where each episode came from (file, folder or npz), for messages."""
    action_space: object | None = None
    """The environment's action space where the source records it (a wmlab dataset), else None."""

    def __post_init__(self) -> None:
        if not self.frames:
            raise VideoError("a video dataset needs at least one episode")
        shapes = {episode.shape[1:] for episode in self.frames}
        if len(shapes) > 1:
            raise VideoError(
                f"the episodes have different frame shapes {sorted(shapes)}; load them with size=(H, W) to resize"
            )
        for index, episode in enumerate(self.frames):
            if episode.dtype != np.uint8 or episode.ndim != 4 or episode.shape[-1] != 3:
                raise VideoError(
                    f"episode {index} must be uint8 frames (T, H, W, 3), got {episode.dtype} {episode.shape}"
                )
        if self.hidden_actions is not None and [len(a) for a in self.hidden_actions] != [len(f) for f in self.frames]:
            raise VideoError("hidden_actions must hold one row per frame of each episode")
        if not self.sources:
            self.sources = [f"episode {index}" for index in range(len(self.frames))]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(int(side) for side in self.frames[0].shape[1:])

    @property
    def num_frames(self) -> int:
        return sum(len(episode) for episode in self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, indices: Sequence[int]) -> VideoDataset:
        """The episodes at `indices` (e.g. a held-out split for grounding)."""
        indices = list(indices)
        return VideoDataset(
            frames=[self.frames[i] for i in indices],
            hidden_actions=None if self.hidden_actions is None else [self.hidden_actions[i] for i in indices],
            sources=[self.sources[i] for i in indices],
            action_space=self.action_space,
        )

    def split(self, held_out: float = 0.2, seed: int = 0) -> tuple[VideoDataset, VideoDataset]:
        """(training, held-out) episodes; at least one episode in each when there are two or more."""
        if len(self) < 2:
            raise VideoError("splitting needs at least two episodes")
        order = np.random.default_rng(seed).permutation(len(self))
        count = min(max(1, round(held_out * len(self))), len(self) - 1)
        return self.subset(sorted(order[count:])), self.subset(sorted(order[:count]))

    def _starts(self, length: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        lengths = np.array([len(episode) for episode in self.frames])
        per_episode = np.clip(lengths - length + 1, 0, None)
        if per_episode.sum() == 0:
            raise VideoError(f"no episode holds {length} frames (the longest holds {lengths.max()})")
        chosen = rng.choice(int(per_episode.sum()), size=count, replace=count > per_episode.sum())
        offsets = np.cumsum(per_episode) - per_episode
        starts = []
        for position in chosen:
            episode = int(np.searchsorted(offsets, position, side="right") - 1)
            starts.append((episode, int(position - offsets[episode])))
        return starts

    def sample_with_actions(
        self, batch_size: int, length: int, rng: np.random.Generator | None = None
    ) -> tuple[Batch, np.ndarray | None]:
        """B windows of T frames inside episodes (every window equally likely) and their hidden
        actions (B, T, ...) (None where the source has none)."""
        rng = rng if rng is not None else np.random.default_rng()
        starts = self._starts(length, batch_size, rng)
        frames = np.stack([self.frames[e][s : s + length] for e, s in starts])
        is_first = np.zeros((batch_size, length), dtype=bool)
        is_first[:, 0] = [s == 0 for _, s in starts]
        batch = Batch(
            obs={"image": frames},
            action=None,
            reward=np.zeros((batch_size, length), np.float32),
            is_first=is_first,
            is_last=np.zeros((batch_size, length), dtype=bool),
            is_terminal=np.zeros((batch_size, length), dtype=bool),
        )
        actions = (
            None
            if self.hidden_actions is None
            else np.stack([self.hidden_actions[e][s : s + length] for e, s in starts])
        )
        return batch, actions

    def sample(self, batch_size: int, length: int, rng: np.random.Generator | None = None) -> Batch:
        """B windows of T frames (obs {"image": (B, T, H, W, C)}, action None)."""
        return self.sample_with_actions(batch_size, length, rng)[0]


# ----------------------------------------------------------------------------------------------
# Reading


def load_video(path: str | Path, size: tuple[int, int] | None = None, image_key: str = "image") -> VideoDataset:
    """Read a wmlab dataset, a folder of PNG sequences or video files, or one video file (see the
    module docstring). size (H, W): resize every frame to it; None: all must share one size."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path} does not exist")
    if path.is_file():
        videos = [(str(path), _read_video_file(path))]
        return _assemble(videos, size)
    if (path / "manifest.json").is_file():
        return _read_wmlab_dataset(path, size, image_key)
    videos: list[tuple[str, np.ndarray]] = []
    pngs = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if pngs:
        videos.append((str(path), _read_png_sequence(pngs, size)))
    for child in sorted(path.iterdir()):
        if child.is_dir():
            sequence = sorted(p for p in child.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if sequence:
                videos.append((str(child), _read_png_sequence(sequence, size)))
        elif child.suffix.lower() in VIDEO_SUFFIXES:
            videos.append((str(child), _read_video_file(child)))
    if not videos:
        raise VideoError(
            f"{path} holds no wmlab dataset (manifest.json), PNG sequence or video file ({', '.join(VIDEO_SUFFIXES)})"
        )
    return _assemble(videos, size)


def _assemble(videos: list[tuple[str, np.ndarray]], size: tuple[int, int] | None) -> VideoDataset:
    frames, sources = [], []
    reference: tuple[str, tuple[int, int]] | None = None
    for source, video in videos:
        video = _rgb(video, source)
        if size is not None:
            video = resize_frames(video, size)
        elif reference is None:
            reference = (source, video.shape[1:3])
        elif video.shape[1:3] != reference[1]:
            raise VideoError(
                f"{source} has frames of {video.shape[1]} x {video.shape[2]}, {reference[0]} of {reference[1][0]} x {reference[1][1]}:"
                " a dataset holds one frame size (pass size=(H, W) / --size to resize every frame)"
            )
        frames.append(video)
        sources.append(source)
    return VideoDataset(frames=frames, sources=sources)


def _read_png_sequence(files: list[Path], size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB")
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                frames.append(np.asarray(image, dtype=np.uint8))
        except (OSError, ValueError) as error:
            raise VideoError(f"{file} is not a readable PNG ({type(error).__name__}: {error})") from None
        if frames[-1].shape != frames[0].shape:
            raise VideoError(
                f"{file} is {frames[-1].shape[0]} x {frames[-1].shape[1]} but {files[0]} is {frames[0].shape[0]} x {frames[0].shape[1]}: the frames of one video must share one size"
            )
    return np.stack(frames)


def _read_video_file(path: Path) -> np.ndarray:
    try:
        import imageio.v3 as iio
    except ImportError:
        raise VideoError(f"reading {path} needs imageio: pip install 'wmlab[video]'") from None
    try:
        video = np.asarray(iio.imread(path, index=None))
    except Exception as error:  # noqa: BLE001 - imageio raises many types for a broken file
        raise VideoError(
            f"{path} is corrupt or not a video imageio can decode ({type(error).__name__}: {error})"
        ) from None
    if video.ndim == 3 and path.suffix.lower() != ".gif":  # one frame of (H, W, C)
        video = video[None]
    if video.ndim == 3:  # a grey GIF (T, H, W)
        video = video[..., None]
    if video.ndim != 4 or len(video) == 0:
        raise VideoError(f"{path} decodes to an array of shape {video.shape}, not frames (T, H, W, C)")
    return video


def _rgb(video: np.ndarray, source: str) -> np.ndarray:
    if video.dtype != np.uint8:
        raise VideoError(f"{source}: frames must be 8-bit, got {video.dtype}")
    channels = video.shape[-1]
    if channels == 1:
        return np.repeat(video, 3, axis=-1)
    if channels == 4:
        return np.ascontiguousarray(video[..., :3])
    if channels != 3:
        raise VideoError(f"{source}: frames have {channels} channels, expected 1, 3 or 4")
    return video


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 frames (T, H, W, C) -> (T, size[0], size[1], C), bilinear with antialiasing (PIL)."""
    from PIL import Image

    height, width = int(size[0]), int(size[1])
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR), dtype=np.uint8) for frame in frames]
    )


def _read_wmlab_dataset(path: Path, size: tuple[int, int] | None, image_key: str) -> VideoDataset:
    manifest = read_manifest(path)
    dataset = load_dataset(path, with_actions=bool(manifest["actions"]))
    frames, actions, sources = [], [], []
    for index, episode in enumerate(dataset.episodes()):
        if image_key not in episode:
            raise VideoError(f"the dataset in {path} has no image observation {image_key!r} (keys: {sorted(episode)})")
        video = _rgb(episode[image_key], f"{path} episode {index}")
        frames.append(resize_frames(video, size) if size is not None else video)
        sources.append(f"{path}/{manifest['episodes'][index]['file']}")
        if manifest["actions"]:
            actions.append(np.asarray(episode["action"]))
    return VideoDataset(
        frames=frames,
        hidden_actions=actions if manifest["actions"] else None,
        sources=sources,
        action_space=dataset.action_space,
    )


def load_run_video(spec) -> tuple[VideoDataset, VideoDataset | None]:
    """(training episodes, held-out episodes or None) of the video a run learned from: spec is the
    run's OfflineRunSpec (dataset, frame_size, held_out, train.seed, and the frame shape and count
    it started on, checked here). The split is the one training used."""
    video = load_video(spec.dataset, size=spec.frame_size)
    shape = list(video.frame_shape)
    recorded = list(spec.observation_space["spaces"]["image"]["shape"])
    if shape != recorded or video.num_frames != spec.dataset_steps:
        raise VideoError(
            f"the video in {spec.dataset} no longer matches the run (frames {shape} x {video.num_frames}; the run "
            f"started on {recorded} x {spec.dataset_steps}): use the same dataset, or start a new run"
        )
    if spec.held_out > 0 and len(video) > 1:
        return video.split(spec.held_out, spec.train.seed)
    return video, None
