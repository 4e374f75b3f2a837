"""The images a proxy evaluation sees: a calibration slice and a proxy-validation slice of the training data.

Both slices are carved once, disjoint and class-balanced (:func:`acp.data.take_stratified`), from the
*training* indices the caller gives -- never from a validation or test split -- and stored as normalized
float32 tensors, so an evaluation never decodes, augments or normalizes anything. A :class:`ProxyData`
holds only these tensors and a description; it keeps no reference to the :class:`~acp.data.ImageData`
it came from, so the official test split (``ImageData.test``) is unreachable from an evaluator.

Pickling converts the tensors to numpy arrays: joblib's loky backend then memory-maps them instead of
copying them into every task, and Dask ``scatter`` sends them once per worker.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from acp.data import ImageData, take_stratified
from acp.errors import UserError


def digest(array: np.ndarray | torch.Tensor) -> str:
    """A short content hash of an index array or tensor (recorded in a proxy data description)."""
    if isinstance(array, torch.Tensor):
        array = array.contiguous().numpy()
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def checked_slice_request(
    calibration_images: object, validation_images: object, seed: object, train_indices, size: int
) -> tuple[int, int, int, np.ndarray]:
    """The proxy slice sizes and seed as ints and the training indices sorted and unique, or a
    UserError naming the bad argument (one check for the classification and the detection proxy)."""
    for name, value in (
        ("calibration_images", calibration_images),
        ("validation_images", validation_images),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UserError(f"proxy data: {name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise UserError(f"proxy data: seed must be an integer, got {seed!r}")
    train = np.unique(np.asarray(train_indices, dtype=np.int64))
    if train.size and (train[0] < 0 or train[-1] >= size):
        raise UserError(f"proxy data: train_indices out of range for {size} images")
    return int(calibration_images), int(validation_images), int(seed), train


def proxy_slices(
    labels: np.ndarray,
    train_indices: np.ndarray,
    calibration_images: int,
    validation_images: int,
    *,
    seed: int,
    avoid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (calibration, validation) indices :meth:`ProxyData.from_image_data` draws: stratified,
    disjoint, validation never from ``avoid``; calibration first (unshuffled, sorted)."""
    train_indices = np.unique(np.asarray(train_indices, dtype=np.int64))
    calibration = take_stratified(train_indices, labels, calibration_images, seed=seed)
    rest = np.setdiff1d(train_indices, calibration, assume_unique=True)
    if avoid is not None:
        rest = np.setdiff1d(rest, np.asarray(avoid, dtype=np.int64))
    if calibration_images > len(train_indices) or validation_images > len(rest):
        where = "" if avoid is None else " outside the avoided images"
        raise UserError(
            f"proxy data: {calibration_images} calibration + {validation_images} validation images "
            f"requested, but the training split has only {len(train_indices)}{where}"
        )
    validation = take_stratified(rest, labels, validation_images, seed=seed + 1)
    return calibration, validation


@dataclass(eq=False)
class ProxyData:
    """Calibration images (BN re-estimation, optional finetune steps) and labelled proxy-validation images.

    ``calibration_images`` is ``(Nc, C, H, W)``, ``validation_images`` ``(Nv, C, H, W)``: normalized
    float32, contiguous (NCHW). ``calibration_labels`` is only used by the optional finetune steps.
    ``description`` records how the slices were drawn (sizes, seed, index digests) for a run directory.
    """

    calibration_images: torch.Tensor
    calibration_labels: torch.Tensor
    validation_images: torch.Tensor
    validation_labels: torch.Tensor
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("calibration_images", "validation_images"):
            images = getattr(self, name)
            if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.float32:
                raise UserError(f"proxy data: {name} must be a float32 tensor (N, C, H, W)")
            if len(images) == 0:
                raise UserError(f"proxy data: {name} is empty")
            setattr(self, name, images.contiguous())
        for name, images in (
            ("calibration_labels", self.calibration_images),
            ("validation_labels", self.validation_images),
        ):
            labels = torch.as_tensor(getattr(self, name))
            if labels.dim() != 1 or len(labels) != len(images) or labels.dtype != torch.int64:
                raise UserError(f"proxy data: {name} must be int64 of length {len(images)}")
            setattr(self, name, labels.contiguous())
        if self.calibration_images.shape[1:] != self.validation_images.shape[1:]:
            raise UserError(
                f"proxy data: calibration images {tuple(self.calibration_images.shape[1:])} and validation "
                f"images {tuple(self.validation_images.shape[1:])} differ in shape"
            )

    @classmethod
    def from_image_data(
        cls,
        data: ImageData,
        train_indices: np.ndarray,
        *,
        calibration_images: int,
        validation_images: int,
        seed: int = 0,
        avoid: np.ndarray | None = None,
    ) -> ProxyData:
        """Two disjoint stratified slices of ``data[train_indices]``: calibration first, then validation
        (never from ``avoid``: e.g. another proxy's validation images, so the finalists are re-scored on
        images the search did not choose them by).

        ``train_indices`` must be the training split (the search never sees the validation/test images).
        """
        calibration_images, validation_images, seed, train_indices = checked_slice_request(
            calibration_images, validation_images, seed, train_indices, len(data)
        )
        calibration, validation = proxy_slices(
            data.labels, train_indices, calibration_images, validation_images, seed=seed, avoid=avoid
        )
        # Calibration batches are consecutive chunks: shuffle (seeded) so each batch mixes the classes.
        calibration = np.random.default_rng(seed).permutation(calibration)
        cal_images, cal_labels = data.tensors(calibration)
        val_images, val_labels = data.tensors(validation)
        description = {
            "spec": data.spec,
            "seed": int(seed),
            **({} if avoid is None else {"avoided_sha256": digest(np.unique(np.asarray(avoid, np.int64)))}),
            "train_size": int(len(train_indices)),
            "train_sha256": digest(train_indices),
            "calibration_images": int(len(calibration)),
            "calibration_sha256": digest(calibration),
            "validation_images": int(len(validation)),
            "validation_sha256": digest(validation),
            "image_shape": list(data.image_shape),
            "mean": list(data.mean),
            "std": list(data.std),
        }
        return cls(cal_images, cal_labels, val_images, val_labels, description)

    def calibration_batches(self, batch_size: int, count: int) -> list[torch.Tensor]:
        """The first ``count`` batches of ``batch_size`` calibration images (views, no copy)."""
        needed = batch_size * count
        if needed > len(self.calibration_images):
            raise UserError(
                f"proxy settings ask for {count} calibration batches of {batch_size} images ({needed}), "
                f"but the proxy data has {len(self.calibration_images)} calibration images"
            )
        return [self.calibration_images[i * batch_size : (i + 1) * batch_size] for i in range(count)]

    def fingerprint(self) -> str:
        """Digest of every tensor's contents: equal fingerprints mean equal scores."""
        combined = hashlib.sha256()
        for tensor in (
            self.calibration_images,
            self.calibration_labels,
            self.validation_images,
            self.validation_labels,
        ):
            combined.update(digest(tensor).encode())
        return combined.hexdigest()[:16]

    def __getstate__(self) -> dict:
        # numpy arrays: loky memory-maps them, pickle copies them once; no torch storage sharing surprises
        return {
            "calibration_images": self.calibration_images.numpy(),
            "calibration_labels": self.calibration_labels.numpy(),
            "validation_images": self.validation_images.numpy(),
            "validation_labels": self.validation_labels.numpy(),
            "description": self.description,
        }

    def __setstate__(self, state: dict) -> None:
        for key in ("calibration_images", "calibration_labels", "validation_images", "validation_labels"):
            # np.array copies: a read-only memmap must not back tensors torch may write to
            setattr(self, key, torch.from_numpy(np.array(state[key], copy=True)))
        self.description = state["description"]
