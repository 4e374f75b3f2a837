"""Random search over keep ratios, with the swarm's ask/tell/state interface: a baseline engine.

``[search] engine = "random"`` evaluates ``particles`` keep-ratio vectors per iteration, each drawn
uniformly in the bounds (EagleEye's random search), repaired onto the budget by the study like every
other candidate. It ignores the clustering proposal and does not evaluate the uniform-ratio candidate,
so the search result has no proposal/uniform records (:attr:`RandomSearch.anchors` is False). All
randomness comes from the engine's own generator, whose state is the checkpoint: an interrupted random
search resumes bit for bit, and a longer one extends a shorter one.
"""

from __future__ import annotations

import numpy as np

from acp.errors import UserError
from acp.settings import SearchSettings

STATE_FORMAT = "acp.random/1"


class RandomSearch:
    """``ask()`` -> ``particles`` uniform keep-ratio vectors; ``tell`` only counts iterations."""

    anchors = False  # iteration 0 holds no proposal / uniform particles

    def __init__(self, settings: SearchSettings, lower, upper, *, proposal=None):
        del proposal  # random search starts from nothing
        self.particles = settings.particles
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(settings.seed)))
        self.iteration = 0

    def ask(self) -> np.ndarray:
        """The next positions. A crash before ``tell`` replays the same draws from the checkpoint."""
        return self.rng.uniform(self.lower, self.upper, size=(self.particles, len(self.lower)))

    def tell(self, positions: np.ndarray, costs: np.ndarray) -> None:
        if np.shape(positions) != (self.particles, len(self.lower)) or np.shape(costs) != (self.particles,):
            raise ValueError(f"tell: expected positions ({self.particles}, {len(self.lower)}) and costs")
        self.iteration += 1

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "iteration": self.iteration, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"checkpoint: engine state format {state.get('format')!r} is not {STATE_FORMAT}")
        self.rng.bit_generator.state = state["rng"]
        self.iteration = int(state["iteration"])
