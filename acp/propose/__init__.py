"""Stage 1: feature statistics on calibration images (a classifier's, or a detector's with box masks),
clustering proposals of the widths, and the channel criteria that rank each group's channels.

``acp.propose(settings, ...)`` -- stage 1 on its own from a run configuration -- is
:func:`acp.workflows.propose.propose`; this package is callable as that function, as ``acp.search`` is
(once the package is imported, the attribute ``acp.propose`` *is* the package).
"""

import sys
import types

from acp.propose.clustering import Proposal, proposal_to_architecture, propose_widths
from acp.propose.criteria import CRITERIA, Criterion, RankedCriterion, make_criterion
from acp.propose.detection_features import box_mask, detection_statistics, transform_with_box_masks
from acp.propose.features import FeatureStatistics, GroupStatistics, collect_statistics

__all__ = [
    "CRITERIA",
    "Criterion",
    "FeatureStatistics",
    "GroupStatistics",
    "Proposal",
    "RankedCriterion",
    "box_mask",
    "collect_statistics",
    "detection_statistics",
    "make_criterion",
    "proposal_to_architecture",
    "propose_widths",
    "transform_with_box_masks",
]


class _CallableModule(types.ModuleType):
    """``acp.propose`` is both this package and the public function ``acp.propose(settings, ...)``."""

    def __call__(self, *args, **kwargs):
        from acp.workflows.propose import propose  # the public API entry point, not a dependency

        return propose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
