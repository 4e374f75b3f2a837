"""Particle swarm over keep ratios, built from pyswarms' ``backend`` primitives, with ask/tell and state.

pyswarms' ``compute_velocity`` draws r1/r2 from numpy's *global* RNG, which a checkpoint cannot own. So
the swarm owns a ``np.random.Generator`` and draws r1/r2 itself, and uses pyswarms only where no
randomness is involved: the ``Swarm`` container, ``compute_pbest``, the topologies' ``compute_gbest``
(Star, Ring, VonNeumann) and the Velocity/BoundaryHandlers (strategy "random" draws global RNG and is
refused). ``state_dict()`` therefore holds everything needed to continue bit for bit: arrays, handler
memories, the topology's neighbour indices and the generator state.

Positions are *Lamarckian*: :meth:`ParticleSwarm.tell` receives the positions actually evaluated (after
budget repair) and the particles move there. pyswarms' ``VelocityHandler("adjust")`` would discard the
PSO velocity (it returns ``position - memory`` of the *old* position), so "adjust" is done here: the
velocity becomes the displacement actually made, old position -> repaired position, clamped.

Re-seeding (``reseed_after`` > 0): a particle that has stayed within ``reseed_radius`` (RMS keep-ratio
distance) of the swarm's best for ``reseed_after`` consecutive iterations has collapsed onto it and adds
nothing but duplicate evaluations; its next position is drawn uniformly in the bounds, with a fresh random
velocity, and its personal best is forgotten (the swarm's best is kept: the particle holding it is never
re-seeded). Measured on the engine benchmark (benchmarks/RESULTS.md, "Search engines").

Costs follow pyswarms (minimized); the study passes ``-score`` and ``+inf`` for failed candidates.
"""

from __future__ import annotations

import numpy as np

from acp.errors import UserError
from acp.search._pyswarms import (
    BoundaryHandler,
    Ring,
    Star,
    Swarm,
    VelocityHandler,
    VonNeumann,
    compute_pbest,
    quiet_reporter,
)
from acp.settings import SearchSettings

STATE_FORMAT = "acp.pso/2"  # /2 adds collapsed_for (re-seeding); /1 loads with zeros
OLD_FORMATS = ("acp.pso/1",)


def initial_positions(
    lower: np.ndarray,
    upper: np.ndarray,
    particles: int,
    rng: np.random.Generator,
    *,
    proposal: np.ndarray | None,
    spread: float,
    random_particles: int,
    warm: np.ndarray | None = None,
) -> np.ndarray:
    """The starting swarm, in keep ratios (before budget repair).

    Particle 0 is the clustering proposal (uniform ratios when there is none), particle 1 keeps every
    group at the same ratio (the uniform baseline), the last ``random_particles`` are uniformly random in
    the bounds (exploration), and the others spread around the proposal as in ACP: particle ``i`` moves
    each group by ``s * spread * i / n`` with ``s`` drawn from {-1, 0, +1}. ``warm`` (another search's
    winner, e.g. the neighbouring budget's) takes particle 2's place (the first around the proposal, or a
    random one when there are none); the random draws stay the same, so the other particles start exactly
    where they would without it.
    """
    dimensions = len(lower)
    center = np.ones(dimensions) if proposal is None else np.asarray(proposal, dtype=np.float64)
    positions = np.empty((particles, dimensions))
    positions[0] = center
    positions[1] = upper  # every group at ratio 1: the repair scales it to the uniform ratio that fits
    around = list(range(2, particles - random_particles))
    for rank, index in enumerate(around, start=1):
        signs = rng.integers(-1, 2, size=dimensions)
        positions[index] = center + signs * spread * rank / max(1, len(around))
    for index in range(particles - random_particles, particles):
        positions[index] = rng.uniform(lower, upper)
    if warm is not None and particles > 2:  # particle 2: the first around the proposal, else a random one
        positions[2] = np.asarray(warm, dtype=np.float64)
    return np.clip(positions, lower, upper)


class ParticleSwarm:
    """A swarm of keep-ratio vectors. ``ask()`` -> positions to evaluate; ``tell(positions, costs)``."""

    def __init__(self, settings: SearchSettings, lower, upper, *, proposal=None, warm=None):
        self.settings = settings
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        dimensions = len(self.lower)
        with quiet_reporter():
            self.topology, self._gbest_kwargs = _topology(settings, dimensions)
            self.boundary = BoundaryHandler(settings.boundary)
            self.velocity_handler = VelocityHandler(
                "unmodified" if settings.velocity_strategy == "adjust" else settings.velocity_strategy
            )
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(settings.seed)))
        position = initial_positions(
            self.lower,
            self.upper,
            settings.particles,
            self.rng,
            proposal=proposal,
            spread=settings.init_spread,
            random_particles=settings.random_particles,
            warm=warm,
        )
        clamp = settings.velocity_clamp
        velocity = self.rng.uniform(-clamp, clamp, size=position.shape)
        self.swarm = Swarm(
            position=position,
            velocity=velocity,
            options={"w": settings.inertia_start, "c1": settings.c1, "c2": settings.c2},
            pbest_pos=position.copy(),
            best_pos=position[0].copy(),
            pbest_cost=np.full(settings.particles, np.inf),
            best_cost=np.inf,
            current_cost=np.full(settings.particles, np.inf),
        )
        self.iteration = 0  # iterations told so far
        # consecutive iterations each particle has spent within reseed_radius of the swarm's best
        self.collapsed_for = np.zeros(settings.particles, dtype=np.int64)
        self._pending_reseed = np.zeros(settings.particles, dtype=bool)

    @property
    def clamp(self) -> tuple[float, float]:
        return (-self.settings.velocity_clamp, self.settings.velocity_clamp)

    def inertia(self, iteration: int) -> float:
        last = max(1, self.settings.inertia_iterations - 1)
        fraction = min(1.0, iteration / last)
        return (
            self.settings.inertia_start + (self.settings.inertia_end - self.settings.inertia_start) * fraction
        )

    # --- ask / tell --------------------------------------------------------------------------------

    def ask(self) -> np.ndarray:
        """Positions for the next iteration (iteration 0: the initial swarm). Does not change the state
        the checkpoint holds except the generator, so a crash before ``tell`` replays the same draws
        from the previous checkpoint."""
        swarm = self.swarm
        if self.iteration == 0:
            self._pending_velocity = swarm.velocity
            return swarm.position.copy()
        swarm.options["w"] = self.inertia(self.iteration)
        shape = swarm.position.shape
        cognitive = self.settings.c1 * self.rng.random(shape) * (swarm.pbest_pos - swarm.position)
        social = self.settings.c2 * self.rng.random(shape) * (swarm.best_pos - swarm.position)
        velocity = swarm.options["w"] * swarm.velocity + cognitive + social
        velocity = self.velocity_handler(velocity, self.clamp, position=swarm.position, bounds=self.bounds)
        position = self.boundary(swarm.position + velocity, self.bounds)
        reseed = self._collapsed()
        if reseed.any():
            count = int(reseed.sum())
            position[reseed] = self.rng.uniform(self.lower, self.upper, size=(count, len(self.lower)))
            velocity = velocity.copy()
            velocity[reseed] = self.rng.uniform(*self.clamp, size=(count, len(self.lower)))
        self._pending_reseed = reseed
        self._pending_velocity = velocity
        return position

    def _collapsed(self) -> np.ndarray:
        """Particles to re-seed at this ask: collapsed long enough, and not the one holding the best."""
        after = self.settings.reseed_after
        if not after:
            return np.zeros(self.swarm.n_particles, dtype=bool)
        collapsed = self.collapsed_for >= after
        collapsed[int(np.argmin(self.swarm.pbest_cost))] = False
        return collapsed

    def tell(self, positions: np.ndarray, costs: np.ndarray) -> None:
        """The positions actually evaluated (repaired) and their costs (lower is better, inf = failed)."""
        swarm = self.swarm
        positions = np.asarray(positions, dtype=np.float64)
        costs = np.asarray(costs, dtype=np.float64)
        if positions.shape != swarm.position.shape or costs.shape != (swarm.n_particles,):
            raise ValueError(f"tell: expected positions {swarm.position.shape} and {swarm.n_particles} costs")
        reseeded = self._pending_reseed if self.iteration > 0 else np.zeros(len(costs), dtype=bool)
        if self.iteration > 0:
            if self.settings.velocity_strategy == "adjust":
                swarm.velocity = np.clip(positions - swarm.position, *self.clamp)
                swarm.velocity[reseeded] = self._pending_velocity[reseeded]
            else:
                swarm.velocity = self._pending_velocity
        if reseeded.any():  # a re-seeded particle starts a new memory where it landed
            swarm.pbest_cost = np.where(reseeded, np.inf, swarm.pbest_cost)
            swarm.pbest_pos = np.where(reseeded[:, None], positions, swarm.pbest_pos)
        if self.boundary.memory is not None:
            self.boundary.memory = positions.copy()  # the last valid position is the repaired one
        swarm.position = positions.copy()
        swarm.current_cost = costs.copy()
        swarm.pbest_pos, swarm.pbest_cost = compute_pbest(swarm)
        best_pos, best_cost = self.topology.compute_gbest(swarm, **self._gbest_kwargs)
        swarm.best_pos, swarm.best_cost = np.array(best_pos, dtype=np.float64), float(best_cost)
        distance = np.sqrt(np.mean((positions - swarm.best_pos) ** 2, axis=1))
        near = (distance < self.settings.reseed_radius) & ~reseeded
        self.collapsed_for = np.where(near, self.collapsed_for + 1, 0)
        self._pending_reseed = np.zeros(len(costs), dtype=bool)
        self.iteration += 1

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower, self.upper

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        swarm = self.swarm
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "position": swarm.position.tolist(),
            "velocity": swarm.velocity.tolist(),
            "pbest_pos": swarm.pbest_pos.tolist(),
            "pbest_cost": swarm.pbest_cost.tolist(),
            "best_pos": np.asarray(swarm.best_pos).tolist(),
            "best_cost": float(swarm.best_cost),
            "current_cost": swarm.current_cost.tolist(),
            "options": dict(swarm.options),
            "boundary_memory": None if self.boundary.memory is None else self.boundary.memory.tolist(),
            "velocity_memory": (
                None if self.velocity_handler.memory is None else self.velocity_handler.memory.tolist()
            ),
            "neighbor_idx": (
                None
                if self.topology.neighbor_idx is None
                else np.asarray(self.topology.neighbor_idx).tolist()
            ),
            "collapsed_for": self.collapsed_for.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") not in (STATE_FORMAT, *OLD_FORMATS):
            raise UserError(f"checkpoint: swarm state format {state.get('format')!r} is not {STATE_FORMAT}")
        swarm = self.swarm
        swarm.position = np.array(state["position"], dtype=np.float64)
        swarm.velocity = np.array(state["velocity"], dtype=np.float64)
        swarm.pbest_pos = np.array(state["pbest_pos"], dtype=np.float64)
        swarm.pbest_cost = np.array(state["pbest_cost"], dtype=np.float64)
        swarm.best_pos = np.array(state["best_pos"], dtype=np.float64)
        swarm.best_cost = float(state["best_cost"])
        swarm.current_cost = np.array(state["current_cost"], dtype=np.float64)
        swarm.options = dict(state["options"])
        memory = state["boundary_memory"]
        self.boundary.memory = None if memory is None else np.array(memory, dtype=np.float64)
        memory = state["velocity_memory"]
        self.velocity_handler.memory = None if memory is None else np.array(memory, dtype=np.float64)
        neighbors = state["neighbor_idx"]
        self.topology.neighbor_idx = None if neighbors is None else np.array(neighbors, dtype=np.int64)
        self.rng.bit_generator.state = state["rng"]
        self.iteration = int(state["iteration"])
        collapsed = state.get("collapsed_for", [0] * swarm.n_particles)
        self.collapsed_for = np.array(collapsed, dtype=np.int64)
        self._pending_reseed = np.zeros(swarm.n_particles, dtype=bool)


def _topology(settings: SearchSettings, dimensions: int):
    if settings.topology == "star":
        return Star(), {}
    if settings.topology == "ring":
        return Ring(static=True), {"p": 2, "k": settings.neighbors}
    needed = VonNeumann.delannoy(dimensions, settings.neighbors)
    if needed > settings.particles:
        raise UserError(
            f"search settings: topology 'von_neumann' with range r={settings.neighbors} over {dimensions} "
            f"groups needs at least {needed} particles, got particles={settings.particles}"
        )
    return VonNeumann(), {"p": 2, "r": settings.neighbors}
