"""Random and human scores of the 26 Atari100k games, and the human-normalised score.

Human-normalised score = (agent - random) / (human - random): 0 plays like a uniformly random
policy, 1 like the human tester. The scores are the ones the Atari100k papers normalise with
(the table in /work/shared/REFERENCE.md, from the authors' result files).

Aggregates over games (`aggregate`):
- "mean" and "median": over games, of each game's mean over runs — what the Atari100k papers
  report (DreamerV3, IRIS, DIAMOND);
- "iqm": the interquartile mean over all runs of all games pooled, the mean of the middle 50 %
  once the lowest and highest quarter are cut (Agarwal et al. 2021, arXiv 2108.13264; the
  quarter is rounded down, as scipy.stats.trim_mean and rliable do).
"""

from __future__ import annotations

import difflib
import math
import statistics
from typing import Mapping, Sequence

#: game -> (random score, human score)
ATARI100K_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}
ATARI100K_GAMES = tuple(ATARI100K_SCORES)


def _key(name: str) -> str:
    # "ALE/MsPacman-v5", "ms_pacman" and "MsPacman" all name one game.
    name = name.removeprefix("ALE/").removeprefix("atari:")
    name = name.split("-v")[0] if "-v" in name else name
    return "".join(character for character in name.lower() if character.isalnum())


_BY_KEY = {_key(game): game for game in ATARI100K_SCORES}


def canonical_game(game: str) -> str:
    """The table's spelling of `game` ("pong", "ALE/Pong-v5", "atari:Pong" -> "Pong")."""
    found = _BY_KEY.get(_key(game))
    if found is None:
        close = difflib.get_close_matches(_key(game), list(_BY_KEY), n=3)
        hint = f" Did you mean: {', '.join(_BY_KEY[key] for key in close)}?" if close else ""
        raise KeyError(f"no random/human scores for {game!r}: the table holds the 26 Atari100k games.{hint}")
    return found


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random) for one of the 26 Atari100k games."""
    random_score, human_score = ATARI100K_SCORES[canonical_game(game)]
    return (float(score) - random_score) / (human_score - random_score)


def interquartile_mean(values: Sequence[float]) -> float:
    """The mean of the middle half: floor(n / 4) values cut from each end of the sorted list."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("the interquartile mean of no values is undefined")
    cut = len(ordered) // 4
    return statistics.fmean(ordered[cut : len(ordered) - cut])


def aggregate(scores_by_game: Mapping[str, float | Sequence[float]]) -> dict[str, float]:
    """Human-normalised "mean", "median" and "iqm" over games, from raw scores.

    Each game maps to one score or to a list of scores (one per run). Also returned:
    "games" (how many) and, per game, "normalized/<Game>" (the mean over its runs).
    """
    if not scores_by_game:
        raise ValueError("aggregate needs at least one game's score")
    per_game: dict[str, float] = {}
    pooled: list[float] = []
    for game, scores in scores_by_game.items():
        runs = [float(scores)] if isinstance(scores, (int, float)) else [float(score) for score in scores]
        if not runs or not all(math.isfinite(score) for score in runs):
            raise ValueError(f"{game}: scores must be finite numbers and at least one, not {scores!r}")
        normalized = [human_normalized_score(game, score) for score in runs]
        per_game[canonical_game(game)] = statistics.fmean(normalized)
        pooled.extend(normalized)
    values = list(per_game.values())
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "iqm": interquartile_mean(pooled),
        "games": len(values),
        **{f"normalized/{game}": value for game, value in per_game.items()},
    }
