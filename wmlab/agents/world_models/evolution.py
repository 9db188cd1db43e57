"""CMA-ES for the controller, with a state that checkpoints without pickle.

The `cma` package's strategy object has no public, version-stable way to be saved except by
pickling it, which a checkpoint must not do (loading a pickle can run code). So the saved state
is plain numbers: the mean, the step size sigma, the covariance matrix and the generation (to
look at, and to fall back on), plus the seed and every generation's fitness values. Restoring
replays the fitness history through a freshly seeded strategy: sampling and adaptation are
deterministic given the seed and the values told, so the replay lands on exactly the state that
was saved (checked against the saved mean). Should the installed `cma` differ from the one that
wrote the checkpoint and the replay disagree, the strategy restarts from the saved mean, sigma
and the covariance's diagonal, with a warning.

The strategy maximises: `tell` takes fitness (higher is better), as returns are.

Shape legend: N candidates (the population), P parameters, G generations.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from wmlab.core.errors import WmlabError


def _import_cma():
    try:
        import cma
    except ModuleNotFoundError:
        raise WmlabError(
            "training the World Models controller needs the cma package: pip install 'wmlab[cma]'"
        ) from None
    return cma


class CMAES:
    """Covariance-matrix adaptation (Hansen's `cma` package) that maximises fitness.

    dimension: P, the number of parameters.
    population: N, candidates per generation.
    initial_sigma: the initial step size.
    seed: seeds the strategy's own random stream (the global numpy one is left alone).
    initial_mean: the starting point (P,), zeros by default.
    """

    def __init__(
        self,
        dimension: int,
        population: int,
        initial_sigma: float,
        seed: int = 0,
        initial_mean: np.ndarray | None = None,
    ):
        if dimension < 1 or population < 2 or not initial_sigma > 0:
            raise ValueError(
                f"CMA-ES needs dimension >= 1, population >= 2 and sigma > 0, got {dimension}, {population}, {initial_sigma}"
            )
        self.dimension = int(dimension)
        self.population = int(population)
        self.initial_sigma = float(initial_sigma)
        self.seed = int(seed)
        self.initial_mean = (
            np.zeros(dimension) if initial_mean is None else np.asarray(initial_mean, dtype=np.float64).copy()
        )
        if self.initial_mean.shape != (self.dimension,):
            raise ValueError(f"initial_mean: expected ({self.dimension},), got {self.initial_mean.shape}")
        #: Fitness of every candidate told so far, one row per generation (G, N).
        self.history: list[np.ndarray] = []
        #: Generations told before the replayed history starts (non-zero only after a fallback).
        self.generation_offset = 0
        self._strategy = self._new_strategy(self.initial_mean, self.initial_sigma)
        self._asked: np.ndarray | None = None

    def _new_strategy(self, mean: np.ndarray, sigma: float, stds: np.ndarray | None = None):
        cma = _import_cma()
        # A private stream: nan tells cma not to reseed numpy's global generator.
        stream = np.random.RandomState(self.seed)
        options = {"popsize": self.population, "seed": math.nan, "randn": stream.randn, "verbose": -9}
        if stds is not None:
            options["CMA_stds"] = stds
        return cma.CMAEvolutionStrategy(mean, sigma, options)

    # --- ask and tell --------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Generations told so far."""
        return self.generation_offset + len(self.history)

    @property
    def mean(self) -> np.ndarray:
        """The distribution's mean (P,): the controller CMA-ES currently believes in."""
        return np.asarray(self._strategy.mean, dtype=np.float64).copy()

    @property
    def sigma(self) -> float:
        return float(self._strategy.sigma)

    @property
    def covariance(self) -> np.ndarray:
        """C (P, P), in units of sigma^2."""
        return np.asarray(self._strategy.sm.C, dtype=np.float64).copy()

    def ask(self) -> np.ndarray:
        """This generation's candidates (N, P); asking twice gives the same ones."""
        if self._asked is None:
            self._asked = np.asarray(self._strategy.ask(), dtype=np.float64)
        return self._asked.copy()

    def tell(self, fitness: Any) -> None:
        """Fitness (N,) of the candidates of `ask`, higher is better."""
        if self._asked is None:
            raise RuntimeError("call ask() before tell()")
        fitness = np.asarray(fitness, dtype=np.float64).reshape(-1)
        if fitness.shape != (self.population,):
            raise ValueError(f"fitness: expected ({self.population},), got {fitness.shape}")
        if not np.all(np.isfinite(fitness)):
            raise ValueError("fitness values must be finite")
        self._strategy.tell(list(self._asked), list(-fitness))  # cma minimises
        self.history.append(fitness.copy())
        self._asked = None

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Numbers only: settings, mean, sigma, covariance, generation and the fitness history."""
        history = np.stack(self.history) if self.history else np.zeros((0, self.population))
        return {
            "dimension": self.dimension,
            "population": self.population,
            "initial_sigma": self.initial_sigma,
            "seed": self.seed,
            "initial_mean": self.initial_mean.copy(),
            "generation": self.generation,
            "generation_offset": self.generation_offset,
            "mean": self.mean,
            "sigma": self.sigma,
            "covariance": self.covariance,
            "fitness_history": history,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "CMAES":
        """Rebuild the strategy of `state_dict()`: exactly, by replaying its fitness history."""
        strategy = cls(
            int(state["dimension"]),
            int(state["population"]),
            float(state["initial_sigma"]),
            int(state["seed"]),
            np.asarray(state["initial_mean"]),
        )
        offset = int(state.get("generation_offset", 0))
        history = np.asarray(state["fitness_history"], dtype=np.float64).reshape(-1, strategy.population)
        if offset == 0:
            for fitness in history:
                strategy.ask()
                strategy.tell(fitness)
            if np.allclose(strategy.mean, np.asarray(state["mean"]), rtol=0, atol=1e-9) and math.isclose(
                strategy.sigma, float(state["sigma"]), rel_tol=1e-9
            ):
                return strategy
            warnings.warn(
                "replaying the CMA-ES fitness history did not reproduce the saved state (was the checkpoint written "
                "with another version of cma?); restarting the search from the saved mean, sigma and covariance diagonal"
            )
        covariance = np.asarray(state["covariance"], dtype=np.float64)
        strategy.seed = strategy.seed + int(state["generation"])  # a fresh stream, not a repeat of the first
        strategy._strategy = strategy._new_strategy(
            np.asarray(state["mean"]), float(state["sigma"]), np.sqrt(np.clip(np.diag(covariance), 1e-30, None))
        )
        strategy.history = []
        strategy.generation_offset = int(state["generation"])
        return strategy
