"""Latency on the user's own runtime: measured per-layer tables, the predictor ``widths -> ms``, its cache.

- :mod:`acp.latency.measure`: the median forward time of one model (``acp finetune``'s metrics);
- :mod:`acp.latency.runtimes`: PyTorch eager, TorchScript, ONNX Runtime, and interleaved timing;
- :mod:`acp.latency.table`: the per-geometry tables and :class:`LatencyModel`, the predictor;
- :mod:`acp.latency.cache`: tables measured once per machine/runtime/model and reused.
"""

from acp.latency.cache import key_for, load_or_build
from acp.latency.runtimes import RUNTIMES, require_runtime
from acp.latency.table import LatencyModel, build_latency_model

__all__ = ["RUNTIMES", "LatencyModel", "build_latency_model", "key_for", "load_or_build", "require_runtime"]
