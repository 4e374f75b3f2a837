"""How an image becomes a model's input: the record a trained model carries (``preprocessing``).

acp's data layer (:mod:`acp.data`) decodes every image as RGB pixels, never resizes or crops (all images
of a data set share one size, the model's input size), scales them to [0, 1] and normalizes each channel
with the data set's mean and std. A model trained that way only works on images prepared the same way,
so the numbers travel with it: in the Architecture document (``best_arch.json``, ``arch.json`` of a
pruned-model folder), on the model :func:`acp.load_pruned` returns (``model.preprocessing``) and in an
exported ONNX file's ``metadata_props`` (``acp.mean``, ``acp.std``, ``acp.input_size``,
``acp.class_names``, each a JSON text).

Validation lives in one place, :func:`parse_preprocessing`, with the same field-path messages as the
Architecture document (``runs/a/best_arch.json: preprocessing.std[1]: 0.0 out of range (0.0, 1.0]``);
constructing a :class:`Preprocessing` runs it too, so an invalid record cannot exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from acp.core.document import (
    Field,
    expect_array,
    expect_int,
    expect_number,
    expect_object,
    expect_str,
    show,
)
from acp.errors import UserError

KEYS = ("mean", "std", "input_size")
OPTIONAL_KEYS = ("class_names",)
METADATA_PREFIX = "acp."  # ONNX metadata_props keys: acp.mean, acp.std, acp.input_size, acp.class_names
PIL_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode images are converted to


@dataclass(frozen=True)
class Preprocessing:
    """``input = (pixels / 255 - mean) / std`` per channel, images of exactly ``input_size`` (C, H, W).

    ``class_names[i]`` names the model's output ``i`` (None when unknown). Values are validated when the
    record is made; :meth:`model_input` applies it to an image.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        checked = parse_preprocessing(Field("<preprocessing>"), self.to_dict())
        for name in (*KEYS, *OPTIONAL_KEYS):
            object.__setattr__(self, name, getattr(checked, name))

    @classmethod
    def of_data(cls, data) -> Preprocessing:
        """The record of an :class:`acp.data.ImageData`: its normalization, image shape and class names."""
        return cls(tuple(data.mean), tuple(data.std), tuple(data.image_shape), tuple(data.classes))

    @classmethod
    def from_dict(cls, document: Any, *, source: str = "<dict>") -> Preprocessing:
        """Validate a parsed JSON object and build the record; UserError naming ``source`` and the field."""
        return parse_preprocessing(Field(str(source)), document)

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    def metadata_props(self) -> dict[str, str]:
        """ONNX ``metadata_props``: ``acp.<key>`` -> the value as JSON text (``acp.class_names`` may be
        ``null``)."""
        return {METADATA_PREFIX + key: json.dumps(value) for key, value in self.to_dict().items()}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str], *, source: str = "<onnx>") -> Preprocessing:
        """The record in ONNX metadata (a mapping key -> JSON text, e.g. onnxruntime's
        ``session.get_modelmeta().custom_metadata_map``); UserError when absent or malformed."""
        at = Field(str(source))
        document = {}
        for key in (*KEYS, *OPTIONAL_KEYS):
            text = props.get(METADATA_PREFIX + key)
            if text is None:
                if key in KEYS:
                    at.fail(f"no {METADATA_PREFIX + key} in the model's metadata (not exported by acp?)")
                continue
            try:
                document[key] = json.loads(text, parse_constant=_refuse_constant)
            except ValueError as error:
                at[METADATA_PREFIX + key].fail(f"expected JSON text, got {show(text)} ({error})")
        return parse_preprocessing(at, document)

    def model_input(self, image) -> np.ndarray:
        """``image`` as the model's input: float32 ``(N, C, H, W)``.

        ``image`` is a PIL image (converted to RGB, or L for one channel) or uint8 pixels ``(H, W, C)`` /
        ``(N, H, W, C)``. Its size must be ``input_size`` already: acp trained on images as they were,
        never resized, so resize or crop an image the way the training images were made first.
        """
        channels, height, width = self.input_size
        if hasattr(image, "convert"):  # a PIL image
            if channels not in PIL_MODES:
                raise UserError(f"model_input: a PIL image cannot become {channels} channels; pass pixels")
            image = np.asarray(image.convert(PIL_MODES[channels]))
            image = image[..., None] if image.ndim == 2 else image
        pixels = np.asarray(image)
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.dtype != np.uint8:
            raise UserError(f"model_input: expected uint8 pixels (0..255), got dtype {pixels.dtype}")
        if pixels.ndim != 4 or pixels.shape[1:] != (height, width, channels):
            raise UserError(
                f"model_input: the model takes {width}x{height} images with {channels} channels "
                f"(height, width, channels = {(height, width, channels)}), got pixels of shape "
                f"{tuple(np.shape(image))}; resize or crop them first"
            )
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        scaled = pixels.astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(((scaled - mean) / std).transpose(0, 3, 1, 2))


def parse_preprocessing(at: Field, value: Any) -> Preprocessing:
    """Validate a preprocessing record (a JSON object; tuples and numpy arrays pass for arrays) at ``at``;
    the one place its rules live."""
    value = expect_object(at, value, KEYS, OPTIONAL_KEYS)
    size = expect_array(at["input_size"], value["input_size"], "3 integers [channels, height, width]")
    if len(size) != 3:
        at["input_size"].fail(f"expected [channels, height, width], got {show(size)}")
    input_size = tuple(expect_int(at["input_size"][i], dim, 1) for i, dim in enumerate(size))
    channels = input_size[0]
    mean = _per_channel(at["mean"], value["mean"], channels, open_low=False)
    std = _per_channel(at["std"], value["std"], channels, open_low=True)
    names = value.get("class_names")
    class_names = None
    if names is not None:
        names = expect_array(at["class_names"], _as_list(names), "class names")
        if not names:
            at["class_names"].fail("expected at least one class name (or null when unknown)")
        class_names = tuple(expect_str(at["class_names"][i], name) for i, name in enumerate(names))
        first = {}
        for i, name in enumerate(class_names):
            if name in first:
                at["class_names"][i].fail(f"duplicate class name {name!r} (also class_names[{first[name]}])")
            first[name] = i
    record = object.__new__(Preprocessing)  # checked here; do not validate a second time
    for key, checked in zip((*KEYS, *OPTIONAL_KEYS), (mean, std, input_size, class_names)):
        object.__setattr__(record, key, checked)
    return record


def check_against_model(at: Field, record: Preprocessing, input_size, num_classes: int | None) -> None:
    """The record belongs to a model of ``input_size`` (C, H, W) and ``num_classes`` outputs."""
    if tuple(record.input_size) != tuple(input_size):
        at["input_size"].fail(
            f"{list(record.input_size)} disagrees with the model's input size {list(input_size)}"
        )
    if record.class_names is not None and num_classes is not None and len(record.class_names) != num_classes:
        at["class_names"].fail(f"has {len(record.class_names)} names but the model has {num_classes} classes")


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _per_channel(at: Field, value: Any, channels: int, *, open_low: bool) -> tuple[float, ...]:
    """One number per channel, in [0, 1] (``open_low``: in (0, 1]): pixels are scaled to [0, 1] first."""
    values = expect_array(at, _as_list(value), f"{channels} numbers (one per input channel)")
    if len(values) != channels:
        plural = "s" if channels != 1 else ""
        at.fail(f"expected {channels} value{plural} (one per channel), got {len(values)}: {show(values)}")
    return tuple(expect_number(at[i], number, 0.0, 1.0, open_low=open_low) for i, number in enumerate(values))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
