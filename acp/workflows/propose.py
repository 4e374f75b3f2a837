"""``acp cluster`` / ``acp.propose(...)``: stage 1 on its own -- widths by feature-map clustering.

Everything is checked before the expensive part: the proposal settings and the budget (also against the
model's smallest allowed widths) are validated before any image is decoded or statistic collected.
"""

from __future__ import annotations

from dataclasses import dataclass

from acp.errors import UserError
from acp.settings import ProposeSettings, RunSettings


@dataclass
class ProposeResult:
    proposal: object  # acp.propose.clustering.Proposal
    architecture: object  # acp.core.architecture.Architecture (channels chosen by the criterion)


def propose(
    settings: RunSettings,
    propose_settings: ProposeSettings | None = None,
    *,
    flops: float | None = None,
    params: float | None = None,
    random_weights: bool = False,
) -> ProposeResult:
    """Cluster every group's channels on calibration images of the training split; budget mode cuts the
    dendrograms onto the budget (``flops``/``params`` replace ``[budget]``), dbscan mode uses ``eps``.

    The feature maps are those of ``[model].weights``, which must exist: clusters of a randomly initialized
    network say nothing about the trained one. ``random_weights=True`` asks for that network explicitly
    (a smoke test of a config before its weights exist)."""
    from acp.core.budget import Budget
    from acp.core.preprocessing import Preprocessing
    from acp.data import take_stratified
    from acp.propose.clustering import proposal_to_architecture, propose_widths
    from acp.propose.criteria import make_criterion
    from acp.propose.features import collect_statistics
    from acp.workflows.problem import load_problem

    options = propose_settings or ProposeSettings()
    settings = settings.with_budget(flops=flops, params=params)
    budget = settings.budget
    if options.mode == "dbscan" and budget.given:
        raise UserError(
            "acp cluster --mode dbscan takes --eps, not a budget: DBSCAN's widths follow from eps "
            "(drop --flops/--params and [budget], or use --mode budget)"
        )
    if options.mode == "budget":
        budget.require("acp cluster")
        if budget.is_multiple:
            raise UserError(
                f"acp cluster makes one proposal; the config lists {len(budget.each())} budgets "
                f"({', '.join(budget.labels())}): pick one with --flops/--params"
            )
    problem = load_problem(
        settings,
        require_weights=not random_weights,
        random_weights=random_weights,
        random_weights_option="--random-weights",
    )
    if options.mode == "budget":
        Budget(problem.space, flops=budget.flops, params=budget.params)  # infeasible: fail before any image
    data, splits = problem.data()
    seed = settings.data.seed
    if problem.task == "detection":
        statistics = _detection_statistics(problem, data, splits, options.images, seed=seed)
    else:
        calibration = take_stratified(splits.train, data.labels, options.images, seed=seed)
        images, labels = data.tensors(calibration)
        statistics = collect_statistics(
            problem.model, problem.space, images, labels=labels, num_images=len(images)
        )
    if options.mode == "budget":
        proposal = propose_widths(statistics, problem.space, flops=budget.flops, params=budget.params)
    else:
        proposal = propose_widths(
            statistics, problem.space, mode="dbscan", eps=options.eps, min_samples=options.min_samples
        )
    criterion = make_criterion(
        options.criterion, problem.space, model=problem.model, statistics=statistics, seed=seed
    )
    arch = proposal_to_architecture(
        proposal, problem.space, problem.identity, criterion, space_settings=problem.space.settings, seed=seed
    )
    if problem.task == "detection":  # a detector normalizes its own inputs (its transform)
        return ProposeResult(proposal, arch)
    return ProposeResult(proposal, arch.with_preprocessing(Preprocessing.of_data(data)))


def _detection_statistics(problem, data, splits, count: int, *, seed: int):
    """Feature statistics with box masks on ``count`` training images (a seeded draw) of detection data."""
    import numpy as np

    from acp.propose.detection_features import detection_statistics

    chosen = np.random.default_rng(seed).permutation(np.asarray(splits.train))[:count]
    images, targets = zip(*(data.sample(int(index)) for index in chosen))
    return detection_statistics(
        problem.model, problem.space, list(images), list(targets), num_images=len(chosen)
    )
