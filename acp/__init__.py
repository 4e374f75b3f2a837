"""acp: automatic channel pruning for PyTorch CNNs (feature-map clustering + budget-exact PSO)."""

__version__ = "0.1.0"

from acp.errors import UserError  # noqa: E402
from acp.models import create_model  # noqa: E402

__all__ = ["UserError", "__version__", "create_model"]
