"""One entry point for building models: ``create_model(name, num_classes=..., **kw)``.

A name is one of
- acp's own CIFAR models (``resnet20_cifar``, ``vgg16_bn_cifar``, ``mobilenetv2_cifar``, ...),
- any torchvision classification model (``resnet18``, ``mobilenet_v2``, ...), always built **without**
  downloading weights,
- torchvision's box detectors (``ssdlite320_mobilenet_v3_large``, ``retinanet_resnet50_fpn``, ...; see
  :mod:`acp.models.detection`, which also says which part of a detector acp traces), built without the
  detector's or the backbone's pretrained weights,
- ``timm:NAME`` -- any model of timm's registry (optional: ``pip install 'acp[timm]'``; see
  :mod:`acp.models.timm_models`), built with ``pretrained=False``,
- ``package.module:factory`` -- imports that module and calls the factory. This is the one place where
  acp executes code named by the user; it is documented as such. The module is looked for in the
  current working directory first, then on the Python path (as ``python -m`` would), so ``acp ...
  --model mymodels:tiny`` run next to ``mymodels.py`` finds it. Like ``python -m``, the directory then
  stays at the front of ``sys.path`` for the rest of the process: worker processes inherit the path,
  and they import the module again when they unpickle the model.

Like timm's ``_cfg``, each acp model records its default input size, its first conv and its classifier,
so the pruner knows which layers to leave alone by default.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from torch import nn

from acp.errors import UserError
from acp.models import detection, timm_models
from acp.models.cifar_resnet import resnet_cifar
from acp.models.mobilenetv2_cifar import mobilenetv2_cifar
from acp.models.vgg_cifar import VGGCifar


@dataclass(frozen=True)
class ModelCard:
    """What acp knows about a registered model besides how to build it."""

    factory: Callable[..., nn.Module]
    input_size: tuple[int, int, int] = (3, 32, 32)
    first_conv: str = "conv1"
    classifier: tuple[str, ...] = ("fc",)
    defaults: dict = field(default_factory=dict)


def _cifar_resnet_cards() -> dict[str, ModelCard]:
    return {
        f"resnet{depth}_cifar": ModelCard(factory=partial(resnet_cifar, depth))
        for depth in (8, 14, 20, 32, 44, 56, 110)
    }


ACP_MODELS: dict[str, ModelCard] = {
    **_cifar_resnet_cards(),
    "vgg16_bn_cifar": ModelCard(
        factory=VGGCifar, first_conv="features.0", classifier=("classifier.linear2",)
    ),
    "mobilenetv2_cifar": ModelCard(
        factory=mobilenetv2_cifar, first_conv="features.0.0", classifier=("classifier.1",)
    ),
}


def torchvision_model_names() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_factory_reference(name: str) -> bool:
    """``package.module:factory`` (a ``timm:NAME`` is not one)."""
    return ":" in name and not timm_models.is_timm_name(name)


def available_models() -> list[str]:
    """Every name ``create_model`` accepts (besides ``package.module:factory`` and ``timm:NAME``)."""
    return sorted(ACP_MODELS) + torchvision_model_names() + detection.detector_names()


def model_card(name: str) -> ModelCard | None:
    """The card of an acp model, or None for torchvision/timm/factory models (their classifiers are found
    as the layers that produce the model output, see :func:`acp.core.graph.analyze`)."""
    return ACP_MODELS.get(name)


def default_input_size(name: str, kwargs: dict | None = None) -> tuple[int, int, int] | None:
    """(channels, height, width) the model expects by default, if known. For a detector: the size of the
    tensor its transform hands the network for a square image (built with ``kwargs``, which may change
    the transform's ``min_size``), see :func:`acp.models.detection.network_input_size`. For ``timm:NAME``:
    the ``input_size`` of timm's pretrained configuration, with ``in_chans``/``img_size`` of ``kwargs``."""
    if timm_models.is_timm_name(name):
        return timm_models.timm_input_size(name, kwargs)
    card = ACP_MODELS.get(name)
    if card is not None:
        return card.input_size
    if name in detection.DETECTORS:
        return detection.detector_input_size(name, kwargs)
    if not is_factory_reference(name) and name in torchvision_model_names():
        return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
    return None


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a model by name with freshly initialized weights (nothing is downloaded)."""
    if not isinstance(name, str) or not name:
        raise UserError(f"model name must be a non-empty string, got {name!r}")
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if timm_models.is_timm_name(name):
        return _build(name, *timm_models.timm_factory(name, kwargs))
    if is_factory_reference(name):
        return _call_factory(name, kwargs)
    card = ACP_MODELS.get(name)
    if card is not None:
        return _build(name, card.factory, {**card.defaults, **kwargs})
    if name in detection.DETECTORS:
        return detection.create_detector(name, kwargs)
    if name in torchvision_model_names():
        import torchvision.models

        if "weights" in kwargs and kwargs["weights"] is not None:
            raise UserError(f"model {name!r}: acp never downloads weights; pass weights=None")
        kwargs["weights"] = None
        return _build(name, partial(torchvision.models.get_model, name), kwargs)
    raise _unknown_model(name)


def check_model_name(name: str) -> None:
    """UserError (with close matches) unless ``create_model`` knows ``name``; factories are not imported."""
    if not isinstance(name, str) or not name:
        raise UserError(f"model name must be a non-empty string, got {name!r}")
    if timm_models.is_timm_name(name):
        timm_models.check_timm_name(name)
        return
    if is_factory_reference(name) or name in ACP_MODELS or name in detection.DETECTORS:
        return
    if name not in torchvision_model_names():
        raise _unknown_model(name)


def _unknown_model(name: str) -> UserError:
    unsupported = detection.unsupported_detector(name)
    if unsupported is not None:
        return unsupported
    close = difflib.get_close_matches(name, available_models(), n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UserError(
        f"unknown model {name!r}{timm_models.timm_hint(name)}{hint} (acp models: "
        f"{', '.join(sorted(ACP_MODELS))}; any torchvision classification model; torchvision detectors: "
        f"{', '.join(detection.detector_names())}; timm:NAME; or package.module:factory)"
    )


def _build(name: str, factory: Callable[..., nn.Module], kwargs: dict) -> nn.Module:
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise UserError(f"model {name!r}: bad arguments {sorted(kwargs)}: {error}") from None


def _call_factory(reference: str, kwargs: dict) -> nn.Module:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UserError(f"model factory {reference!r} must look like package.module:factory")
    _put_working_directory_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise _factory_import_error(reference, module_name, error) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UserError(f"model factory {reference!r}: {module_name} has no callable {attribute!r}")
    model = _build(reference, factory, kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {reference!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _put_working_directory_on_path() -> None:
    """The current directory at the front of ``sys.path``, where ``python -m`` and ``python -c`` put it
    and the ``acp`` console script does not (it puts its own bin folder there)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _factory_import_error(reference: str, module_name: str, error: ImportError) -> UserError:
    missing = getattr(error, "name", None) or ""
    if isinstance(error, ModuleNotFoundError) and (module_name + ".").startswith(missing + "."):
        path = module_name.replace(".", os.sep)
        return UserError(
            f"model factory {reference!r}: cannot import {module_name!r}: no module {missing!r} in the "
            f"current directory ({os.getcwd()}) nor on the Python path (PYTHONPATH and the installed "
            f"packages); run acp from the folder that holds {path}.py (or {path}/), or add that folder to "
            "PYTHONPATH"
        )
    return UserError(f"model factory {reference!r}: cannot import {module_name!r}: {error}")
