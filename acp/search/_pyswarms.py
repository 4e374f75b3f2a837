"""pyswarms' backend primitives, imported and constructed without touching the application's logging.

Every pyswarms module and every topology/handler instance creates a ``Reporter`` whose constructor calls
``logging.config.dictConfig``: it replaces the root logger's format and adds a file handler that writes
``report.log`` into the current directory -- at import time already. acp leaves the user's logging and
working directory alone, so that set-up is suppressed while pyswarms is imported and while acp builds
its objects (pyswarms' loggers still work through the application's configuration).
"""

from __future__ import annotations

import contextlib
import logging.config


@contextlib.contextmanager
def quiet_reporter():
    original = logging.config.dictConfig
    logging.config.dictConfig = lambda config: None
    try:
        yield
    finally:
        logging.config.dictConfig = original


with quiet_reporter():
    from pyswarms.backend.handlers import BoundaryHandler, VelocityHandler
    from pyswarms.backend.operators import compute_pbest
    from pyswarms.backend.swarms import Swarm
    from pyswarms.backend.topology import Ring, Star, VonNeumann

__all__ = [
    "BoundaryHandler",
    "Ring",
    "Star",
    "Swarm",
    "VelocityHandler",
    "VonNeumann",
    "compute_pbest",
    "quiet_reporter",
]
