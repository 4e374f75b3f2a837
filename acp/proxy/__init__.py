"""The inner loop of the search: proxy data, BatchNorm recalibration, scoring, the evaluators (a classifier's
and a torchvision detector's), shipping them to workers."""

from acp.proxy.data import ProxyData
from acp.proxy.detection import (
    DetectionProxyData,
    DetectionProxyEvaluator,
    default_detection_proxy_data,
    finalist_detection_proxy_data,
)
from acp.proxy.evaluator import (
    FAILED_SCORE,
    BaseProxyEvaluator,
    ProxyEvaluator,
    Result,
    default_proxy_data,
    evaluate_widths,
    finalist_proxy_data,
    fit_to_training_split,
    recalibrate_batchnorm,
)

__all__ = [
    "FAILED_SCORE",
    "BaseProxyEvaluator",
    "DetectionProxyData",
    "DetectionProxyEvaluator",
    "ProxyData",
    "ProxyEvaluator",
    "Result",
    "default_detection_proxy_data",
    "default_proxy_data",
    "finalist_detection_proxy_data",
    "evaluate_widths",
    "finalist_proxy_data",
    "fit_to_training_split",
    "recalibrate_batchnorm",
]
