"""From an Architecture to a physically smaller network, and pruned models on disk.

``materialize`` slices a copy of the unpruned model with the index plan its ChannelSpace recorded (no
dependency graph is built per call, which matters when a search materializes thousands of candidates);
``materialize_with_torch_pruning`` is the slow reference path through Torch-Pruning, kept to check the
fast one. A pruned model is stored as ``arch.json`` (the Architecture) + ``weights.pt`` (a plain
state_dict) and loaded by rebuilding the base model, applying the architecture and loading the weights
with ``weights_only=True`` -- no pickled modules anywhere. The loaded model carries the preprocessing its
architecture records as ``model.preprocessing`` (an :class:`acp.core.preprocessing.Preprocessing`, or None
for an architecture written before it was recorded), and :func:`export_onnx` writes it into the ONNX
file's ``metadata_props``.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from acp.core.architecture import Architecture, ModelIdentity
from acp.core.graph import pruned_copy
from acp.core.preprocessing import Preprocessing
from acp.core.space import ChannelSpace
from acp.errors import UserError
from acp.fileio import atomic_torch_save, load_weights_into
from acp.models.detection import traced_network
from acp.settings import SpaceSettings

log = logging.getLogger(__name__)

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "weights.pt"
PREPROCESSING_ATTRIBUTE = "preprocessing"  # set on the model load_pruned returns
_CARRIED = object()  # export_onnx's default: the preprocessing the model carries


def example_input(identity: ModelIdentity) -> torch.Tensor:
    return torch.zeros((1, *identity.input_size))


def space_settings_for(identity: ModelIdentity, settings: Mapping | None) -> dict:
    """Space settings with defaults filled in; the registry's classifier names are always ignored."""
    from acp.models import model_card

    settings = dict(settings or {})
    unknown = sorted(set(settings) - {"round_to", "min_keep", "ignored_layers"})
    if unknown:
        allowed = "round_to, min_keep, ignored_layers"
        raise UserError(f"space settings: unknown key {unknown[0]!r} (allowed: {allowed})")
    ignored = list(settings.get("ignored_layers") or [])
    card = model_card(identity.name)
    if card is not None:
        ignored += [name for name in card.classifier if name not in ignored]
    defaults = SpaceSettings()
    return {
        "round_to": settings.get("round_to", defaults.round_to),
        "min_keep": settings.get("min_keep", defaults.min_keep),
        "ignored_layers": ignored,
    }


def architecture_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/arch.json`` for a directory written by :func:`save_pruned`."""
    path = Path(path)
    return path / ARCH_FILE if path.is_dir() else path


def load_architecture(path: str | os.PathLike) -> tuple[Architecture, nn.Module, ChannelSpace]:
    """Read an architecture file once, build its unpruned model (random init) and space, and check the
    architecture against that space (errors name the file)."""
    path = architecture_file(path)
    arch = Architecture.load(path)
    base, space = build_space(arch.model, arch.space)
    arch.validate_against(space, source=str(path))
    return arch, base, space


def build_space(
    identity: ModelIdentity, space_settings: Mapping | None = None
) -> tuple[nn.Module, ChannelSpace]:
    """The unpruned model (fresh random init) and its ChannelSpace."""
    from acp.models import create_model

    model = create_model(identity.name, identity.num_classes, **dict(identity.kwargs))
    space = space_for(model, identity, space_settings)
    return model, space


def space_for(model: nn.Module, identity: ModelIdentity, space_settings: Mapping | None) -> ChannelSpace:
    settings = space_settings_for(identity, space_settings)
    return ChannelSpace.build(
        model,
        example_input(identity),
        ignored_layers=settings["ignored_layers"],
        round_to=settings["round_to"],
        min_keep=settings["min_keep"],
        model_name=identity.name,
    )


def materialize(model: nn.Module, arch: Architecture, space: ChannelSpace | None = None) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping ``arch``'s channels (weights and BN statistics
    of the kept channels are inherited). ``model`` is not modified.

    Pass the model's ``space`` when materializing many architectures: without it one is built per call.
    """
    if space is None:
        space = space_for(model, arch.model, arch.space)
    arch.validate_against(space)
    return pruned_copy(model, space.removal_plan(arch.keep))


def materialize_with_torch_pruning(model: nn.Module, arch: Architecture) -> nn.Module:
    """Reference implementation: a fresh DependencyGraph and one ``group.prune()`` per group."""
    pruned = copy.deepcopy(model)
    modes = {name: module.training for name, module in pruned.named_modules()}
    with torch.enable_grad():
        example = example_input(arch.model).to(next(pruned.parameters()).device)
        network = traced_network(pruned)  # a detector's backbone and heads, sharing its modules
        graph = tp.DependencyGraph().build_dependency(network, (example,), verbose=False)
    for choice in arch.groups:
        remove = sorted(set(range(choice.full_width)) - set(choice.keep))
        if not remove:
            continue
        root = network.get_submodule(choice.id)
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, remove).prune()
    for name, module in pruned.named_modules():
        module.training = modes[name]  # build_dependency switched everything to eval
    return pruned


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def save_pruned(model: nn.Module, arch: Architecture, directory: str | os.PathLike) -> Path:
    """Write ``directory/arch.json`` and ``directory/weights.pt`` (a plain state_dict), each atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"output {directory} exists and is not a directory")
    params = parameter_count(model)
    if params != arch.params:
        raise UserError(
            f"model has {params} parameters but the architecture has {arch.params}: "
            "save the model materialized from this architecture"
        )
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    atomic_torch_save(directory / WEIGHTS_FILE, state)
    arch.save(directory / ARCH_FILE)
    return directory


def load_pruned(
    path_or_arch: str | os.PathLike | Architecture, weights: str | os.PathLike | None = None
) -> nn.Module:
    """Rebuild a pruned model: base model -> architecture -> state_dict (``weights_only=True``).

    ``path_or_arch``: a directory written by :func:`save_pruned`, an architecture JSON file (weights default
    to ``weights.pt`` beside it), or an Architecture (then ``weights`` is required). The model's
    ``preprocessing`` attribute is the architecture's record of how to prepare its input images (None when
    the file has none): ``model(torch.from_numpy(model.preprocessing.model_input(image)))``.
    """
    if isinstance(path_or_arch, Architecture):
        arch = path_or_arch
        if weights is None:
            raise UserError("load_pruned: weights file required when passing an Architecture")
        base, space = build_space(arch.model, arch.space)
    else:
        arch_path = architecture_file(path_or_arch)
        arch, base, space = load_architecture(arch_path)
        if weights is None:
            weights = arch_path.parent / WEIGHTS_FILE
            if not weights.is_file():
                raise UserError(f"no weights for {arch_path}: expected {weights} (or pass weights=...)")
    model = _load_pruned_weights(base, materialize(base, arch, space), weights)
    if hasattr(model, PREPROCESSING_ATTRIBUTE):  # the network's own attribute of that name wins
        log.warning(
            "%s already has an attribute %r: the architecture's preprocessing is not attached (read it from "
            "Architecture.load(...).preprocessing)",
            type(model).__name__,
            PREPROCESSING_ATTRIBUTE,
        )
    else:
        setattr(model, PREPROCESSING_ATTRIBUTE, arch.preprocessing)
    return model


def _load_pruned_weights(base: nn.Module, pruned: nn.Module, weights) -> nn.Module:
    """Load ``weights`` into the pruned model; the unpruned model's weights get a hint to prune first."""
    from acp.fileio import load_state_dict_file

    try:
        return load_weights_into(pruned, weights)
    except UserError as error:
        state = load_state_dict_file(weights)
        base_state = base.state_dict()
        unpruned = state.keys() == base_state.keys() and all(
            state[key].shape == base_state[key].shape for key in base_state
        )
        if not unpruned:
            raise
        raise UserError(
            f"{error} -- {weights} holds the unpruned model's weights; run `acp prune ARCH --weights "
            f"{weights} --out DIR` first and use DIR"
        ) from None


def export_onnx(
    model: nn.Module,
    input_shape,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    preprocessing: Preprocessing | None = _CARRIED,
) -> Path:
    """Export ``model`` (in eval mode, batch dimension dynamic) to ONNX, written atomically.

    ``input_shape`` is (C, H, W) or (N, C, H, W). ``model`` keeps its train/eval mode. ``preprocessing``
    (default: the ``model.preprocessing`` :func:`load_pruned` attached, if any) is written into the file's
    ``metadata_props`` as JSON texts: ``acp.mean``, ``acp.std``, ``acp.input_size``, ``acp.class_names``
    (this needs the ``onnx`` package).
    """
    from acp.models.detection import is_detector

    if is_detector(model):
        return _export_detector_onnx(model, input_shape, Path(path), opset=opset)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"input_shape: expected (channels, height, width), got {tuple(input_shape)}")
    if preprocessing is _CARRIED:
        preprocessing = getattr(model, PREPROCESSING_ATTRIBUTE, None)
        preprocessing = preprocessing if isinstance(preprocessing, Preprocessing) else None
    if preprocessing is not None:
        if not isinstance(preprocessing, Preprocessing):
            raise UserError(f"preprocessing: expected a Preprocessing, got {type(preprocessing).__name__}")
        if tuple(preprocessing.input_size) != shape[1:]:
            raise UserError(
                f"preprocessing: input size {list(preprocessing.input_size)} disagrees with the exported "
                f"input shape {list(shape[1:])}"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = copy.deepcopy(model).eval()
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
            torch.onnx.export(
                exported,
                (torch.zeros(shape),),
                temp_name,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=opset,
                dynamo=False,  # the torch.export-based exporter needs onnxscript, an extra dependency
            )
        if preprocessing is not None:
            _write_metadata(temp_name, preprocessing)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


DETECTOR_OUTPUTS = ("boxes", "scores", "labels")


def _export_detector_onnx(model: nn.Module, input_shape, path: Path, *, opset: int | None) -> Path:
    """A torchvision detector as torchvision exports it: input ``image``, one float (3, H, W) image in
    [0, 1] of any height and width (the detector's transform, box decoding and NMS are in the graph);
    outputs ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,). Written atomically."""
    channels, height, width = (int(d) for d in tuple(input_shape)[-3:])
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = copy.deepcopy(model).eval()
    example = torch.rand((channels, height, width), generator=torch.Generator().manual_seed(0))
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warnings of torchvision's detection code
            torch.onnx.export(
                exported,
                ([example],),
                temp_name,
                input_names=["image"],
                output_names=list(DETECTOR_OUTPUTS),
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    **{name: {0: "detections"} for name in DETECTOR_OUTPUTS},
                },
                opset_version=opset or 17,
                dynamo=False,
            )
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def onnx_detection_difference(model: nn.Module, input_size, path, *, top: int = 10) -> tuple[int, float]:
    """(compared, largest box difference in pixels): onnxruntime's and PyTorch's ``top`` highest-scoring
    detections on a seeded image, in score order; RuntimeError when their scores or boxes disagree beyond
    float tolerance. Detections whose scores tie (an untrained detector's are all equal) cannot be
    ordered, so only the leading run of distinct scores is compared (0 compared: nothing to check)."""
    import onnxruntime

    image = torch.rand(tuple(input_size)[-3:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()([image])[0]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, _ = session.run(None, {"image": image.numpy()})
    order = np.argsort(-scores, kind="stable")
    want_scores, want_boxes = expected["scores"].numpy(), expected["boxes"].numpy()
    count = min(top, len(order), len(want_scores))
    ties = np.flatnonzero(np.diff(want_scores[: count + 1]) == 0)  # detection i ties with i + 1
    distinct = int(ties[0]) if len(ties) else count
    got_scores, got_boxes = scores[order][:distinct], boxes[order][:distinct]
    difference = float(np.abs(got_boxes - want_boxes[:distinct]).max()) if distinct else 0.0
    if distinct and not (
        np.allclose(got_scores, want_scores[:distinct], rtol=1e-3, atol=1e-4)
        and np.allclose(got_boxes, want_boxes[:distinct], rtol=1e-3, atol=1e-2)
    ):
        raise RuntimeError(f"ONNX export of {path} disagrees with PyTorch (max box difference {difference})")
    return distinct, difference


def _write_metadata(onnx_path: str, preprocessing: Preprocessing) -> None:
    """Add the preprocessing to an ONNX file's ``metadata_props`` (replacing acp's keys, keeping others)."""
    try:
        import onnx
    except ImportError:
        raise UserError(
            "writing the preprocessing into the ONNX file needs the onnx package: pip install 'acp[onnx]'"
        ) from None
    document = onnx.load(onnx_path)
    props = preprocessing.metadata_props()
    kept = [(entry.key, entry.value) for entry in document.metadata_props if entry.key not in props]
    del document.metadata_props[:]
    for key, value in (*kept, *props.items()):
        document.metadata_props.add(key=key, value=value)
    channels, height, width = preprocessing.input_size
    document.doc_string = (
        f"input: float32 (batch, {channels}, {height}, {width}) = (pixels / 255 - acp.mean) / acp.std per "
        "channel, RGB images of exactly acp.input_size (not resized); output i is acp.class_names[i]"
    )
    onnx.save(document, onnx_path)


def preprocessing_of_onnx(path: str | os.PathLike) -> Preprocessing:
    """The preprocessing :func:`export_onnx` wrote into ``path``'s metadata; UserError when it has none."""
    import onnx

    document = onnx.load(str(path), load_external_data=False)
    props = {entry.key: entry.value for entry in document.metadata_props}
    return Preprocessing.from_metadata_props(props, source=str(path))


def onnx_max_difference(model: nn.Module, input_size, path) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on a seeded input;
    RuntimeError when they disagree beyond float tolerance (needs the ``onnx`` extra)."""
    import onnxruntime

    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(example).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": example.numpy()})
    difference = float(np.abs(actual - expected).max())
    if not np.allclose(actual, expected, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"ONNX export of {path} disagrees with PyTorch (max abs difference {difference})")
    return difference
