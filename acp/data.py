"""Data specs -> decoded uint8 image arrays, deterministic splits, and fast batches of tensors.

A data SPEC is
- a path to an ImageFolder tree (``root/<class>/<image>``), e.g. ``../shared/data/cifar10/train``,
- a path to torchvision's on-disk CIFAR-10/100 files (``cifar-10-batches-py`` / ``cifar-100-python`` or a
  directory containing one; detected, never downloaded),
- ``digits`` or ``digits:SIZE``: scikit-learn's bundled 8x8 digits, upsampled to SIZE x SIZE (default 32)
  and replicated to 3 channels so every CIFAR model accepts them.

Small images are decoded once and cached on disk as a raw uint8 array keyed by the path and every file's
size and mtime, so an epoch over CIFAR spends its time in the model, not in JPEG decoding. Batches are
built on tensors: index the uint8 array, convert, normalize, and (for training) augment with a random
crop with padding and a horizontal flip drawn from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from acp.errors import UserError
from acp.fileio import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Named splits: "shared" is the split of ../shared/models (last 500 files per class are validation).
NAMED_SPLITS = {"shared": "tail:500", "cifar10-shared": "tail:500"}
MAX_CACHED_PIXELS = 2_000_000_000  # uint8 values; larger datasets are not cached in memory/disk this way


@dataclass
class ImageData:
    """Decoded images of one data spec: uint8 ``(N, H, W, C)`` with integer labels."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    spec: str
    files: list[str] | None = None  # relative paths in sorted order (ImageFolder only)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    test: ImageData | None = field(default=None, repr=False)  # official test split (CIFAR format only)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as a model sees it."""
        _, height, width, channels = self.images.shape
        return (channels, height, width)

    def tensors(self, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 NCHW images and int64 labels for ``indices`` (all when None), contiguous."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        return self.normalize(torch.from_numpy(self.images[indices])), torch.from_numpy(self.labels[indices])

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> ImageData:
        """The same images (arrays shared, not copied) normalized with ``mean``/``std`` instead -- those a
        trained model carries, rather than statistics of these images."""
        test = None if self.test is None else self.test.with_normalization(mean, std)
        return replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), test=test)

    def normalize(self, uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std).contiguous()


# --------------------------------------------------------------------------------------------- loading


def load_data(spec: str, *, cache_dir: str | os.PathLike | None = None) -> ImageData:
    """Decode the images named by ``spec`` (see module docstring); uses the on-disk cache when valid."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"data spec must be a path or 'digits', got {spec!r}")
    spec = spec.strip()
    if spec == "digits" or spec.startswith("digits:"):
        return _load_digits(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data path not found: {spec}")
    if not path.is_dir():
        raise UserError(f"data path {spec} is not a directory (expected an ImageFolder tree or CIFAR files)")
    cifar_dir = _find_cifar_dir(path)
    if cifar_dir is not None:
        return _load_cifar(cifar_dir, spec)
    return _load_image_folder(path, spec, cache_dir)


def _load_digits(spec: str) -> ImageData:
    from sklearn.datasets import load_digits

    size_text = spec.partition(":")[2] or "32"
    if not size_text.isdigit() or not 8 <= int(size_text) <= 256:
        raise UserError(f"data spec {spec!r}: size must be an integer in [8, 256], e.g. digits:16")
    size = int(size_text)
    digits = load_digits()
    pixels = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # values 0..16
    upsampled = torch.nn.functional.interpolate(
        pixels, size=(size, size), mode="bilinear", align_corners=False
    )
    gray = (upsampled.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    images = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=3))
    mean = float(images.mean() / 255.0)
    std = float(images.std() / 255.0)
    return ImageData(
        images=images,
        labels=digits.target.astype(np.int64),
        classes=[str(d) for d in range(10)],
        spec=spec,
        mean=(mean,) * 3,
        std=(std,) * 3,
    )


def _find_cifar_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (
            (candidate / "data_batch_1").is_file()
            or (candidate / "train").is_file()
            and (candidate / "meta").is_file()
        ):
            return candidate
    return None


def _unpickle_cifar(path: Path) -> dict:
    # torchvision's CIFAR files are pickles of plain dicts/lists/numpy arrays; restrict what may be built
    # so a crafted file cannot execute code.
    class _Restricted(pickle.Unpickler):
        allowed = {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }

        def find_class(self, module: str, name: str):
            if (module, name) in self.allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    try:
        with open(path, "rb") as stream:
            return _Restricted(stream, encoding="latin1").load()
    except Exception as error:
        raise UserError(f"CIFAR file {path} cannot be read: {error}") from None


def _load_cifar(directory: Path, spec: str) -> ImageData:
    is_cifar100 = (directory / "train").is_file()
    if is_cifar100:
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
        classes = _unpickle_cifar(directory / "meta")["fine_label_names"]
    else:
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = ["test_batch"], "labels"
        classes = _unpickle_cifar(directory / "batches.meta")["label_names"]

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            batch = _unpickle_cifar(directory / name)
            images.append(
                np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            )
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    train_images, train_labels = read(train_files)
    data = ImageData(train_images, train_labels, list(classes), spec)
    if is_cifar100:
        data.mean, data.std = _channel_stats(train_images)
    if all((directory / name).is_file() for name in test_files):
        test_images, test_labels = read(test_files)
        data.test = ImageData(
            test_images, test_labels, list(classes), spec + "#test", mean=data.mean, std=data.std
        )
    return data


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative file paths, labels, class names) of an ImageFolder tree, in sorted class/file order."""
    root = Path(root)
    classes = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise UserError(f"data folder {root} has no class subfolders (expected root/<class>/<image files>)")
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        names = sorted(
            entry.name
            for entry in os.scandir(root / name)
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        files += [f"{name}/{file_name}" for file_name in names]
        labels += [label] * len(names)
    if not files:
        raise UserError(f"data folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, np.asarray(labels, dtype=np.int64), classes


def decode_images(root: str | os.PathLike, files: Sequence[str], *, threads: int = 2) -> np.ndarray:
    """Decode image files (RGB) into one uint8 ``(N, H, W, 3)`` array; all images must share a size."""
    from PIL import Image

    root = Path(root)

    def decode(relative: str) -> np.ndarray:
        try:
            with Image.open(root / relative) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as error:
            raise UserError(f"image {root / relative} cannot be decoded: {error}") from None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        decoded = list(pool.map(decode, files, chunksize=256))
    first_shape = decoded[0].shape
    for relative, image in zip(files, decoded):
        if image.shape != first_shape:
            raise UserError(
                f"image {root / relative} is {image.shape[1]}x{image.shape[0]}, but "
                f"{root / files[0]} is {first_shape[1]}x{first_shape[0]}: all images must have one size"
            )
    return np.ascontiguousarray(np.stack(decoded))


def _folder_fingerprint(root: Path, files: Sequence[str]) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode())
    for relative in files:
        stat = os.stat(root / relative)
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def default_cache_dir() -> Path:
    base = os.environ.get("ACP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "acp"
    )
    return Path(base)


def _load_image_folder(root: Path, spec: str, cache_dir: str | os.PathLike | None) -> ImageData:
    files, labels, classes = list_image_folder(root)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_root / f"imagefolder-{_folder_fingerprint(root, files)}.npy"
    images = None
    if cache_file.is_file():
        try:
            images = np.load(cache_file, mmap_mode=None, allow_pickle=False)
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(files):
                images = None
        except (OSError, ValueError):
            images = None
        if images is None:
            log.warning("ignoring unreadable image cache %s", cache_file)
    if images is None:
        log.info("decoding %d images under %s (cached afterwards in %s)", len(files), root, cache_root)
        images = decode_images(root, files)
        if images.size <= MAX_CACHED_PIXELS:
            try:
                atomic_write(
                    cache_file, lambda stream: np.save(stream, images, allow_pickle=False), binary=True
                )
            except OSError as error:  # a read-only home must not stop training
                log.warning("could not write image cache %s: %s", cache_file, error)
    mean, std = (
        (CIFAR10_MEAN, CIFAR10_STD) if _looks_like_cifar10(classes, images) else _channel_stats(images)
    )
    return ImageData(images, labels, classes, spec, files=files, mean=mean, std=std)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _looks_like_cifar10(classes: list[str], images: np.ndarray) -> bool:
    # The shared base models were trained with the canonical CIFAR-10 statistics; use them exactly.
    return classes == CIFAR10_CLASSES and images.shape[1:] == (32, 32, 3)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[:: max(1, len(images) // 10000)].astype(np.float64) / 255.0
    mean = sample.mean(axis=(0, 1, 2))
    std = sample.std(axis=(0, 1, 2))
    return tuple(round(float(v), 4) for v in mean), tuple(round(max(float(v), 1e-3), 4) for v in std)


# --------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    """Index sets into an :class:`ImageData`. ``describe()`` writes down how to reproduce them."""

    method: str
    seed: int
    train: np.ndarray
    val: np.ndarray

    def describe(self) -> dict:
        return {
            "method": self.method,
            "seed": self.seed,
            "train_size": int(len(self.train)),
            "val_size": int(len(self.val)),
            "train_sha256": _indices_digest(self.train),
            "val_sha256": _indices_digest(self.val),
        }


def _indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def make_splits(data: ImageData, method: str = "auto", *, seed: int = 0) -> Splits:
    """Deterministic train/validation split.

    ``method``: ``tail:K`` (last K files per class in sorted file order are validation -- the shared base
    model's split, also named ``shared``), ``random:F`` (a stratified random fraction F for validation,
    drawn from ``seed``), or ``auto`` (``shared`` for the CIFAR-10 ImageFolder tree, else ``random:0.1``).
    """
    if method == "auto":
        method = "shared" if data.files is not None and data.classes == CIFAR10_CLASSES else "random:0.1"
    method = NAMED_SPLITS.get(method, method)
    kind, _, argument = method.partition(":")
    labels = data.labels
    is_val = np.zeros(len(labels), dtype=bool)
    if kind == "tail":
        if not argument.isdigit() or int(argument) < 1:
            raise UserError(f"split {method!r}: tail:K needs a positive integer K")
        per_class = int(argument)
        for label in range(data.num_classes):
            members = np.flatnonzero(labels == label)  # already in sorted file order
            if len(members) <= per_class:
                raise UserError(
                    f"split {method!r}: class {data.classes[label]!r} has only {len(members)} images"
                )
            is_val[members[-per_class:]] = True
    elif kind == "random":
        try:
            fraction = float(argument)
        except ValueError:
            fraction = -1.0
        if not 0.0 < fraction < 1.0:
            raise UserError(f"split {method!r}: random:F needs a fraction 0 < F < 1")
        rng = np.random.default_rng(seed)
        for label in range(data.num_classes):
            members = np.flatnonzero(labels == label)
            count = int(round(len(members) * fraction))
            if count:
                is_val[rng.permutation(members)[:count]] = True
    else:
        raise UserError(f"unknown split {method!r}: use 'shared', 'tail:K' or 'random:F'")
    splits = Splits(method, seed, np.flatnonzero(~is_val), np.flatnonzero(is_val))
    check_split_sizes(data, splits)
    return splits


SMALL_VALIDATION = 100  # below this many images one image moves validation accuracy by more than 1%


def check_split_sizes(data: ImageData, splits: Splits) -> None:
    """UserError for a split nothing can be learnt or measured on; a warning for one too small to trust.

    Errors: a class with no training image (so also fewer training images than classes), or an empty
    validation split. Warning: fewer than ``SMALL_VALIDATION`` validation images.
    """
    where = f"split {splits.method!r} of data {data.spec} ({len(data)} images, {data.num_classes} classes)"
    trained = np.bincount(data.labels[splits.train], minlength=data.num_classes)
    if not trained.all():
        label = int(np.flatnonzero(trained == 0)[0])
        total = int(np.sum(data.labels == label))
        others = int(np.sum(trained == 0)) - 1
        reason = "has no images" if total == 0 else f"has no training image (its {total} went to validation)"
        raise UserError(
            f"{where}: class {data.classes[label]!r} {reason}"
            + (f", nor do {others} more classes" if others else "")
            + "; every class needs training images: hold out less, or add images"
        )
    if len(splits.val) == 0:
        raise UserError(
            f"{where}: the validation split is empty (too few images per class for this split); "
            "hold out more, e.g. random:0.2 or tail:1"
        )
    if len(splits.val) < SMALL_VALIDATION:
        log.warning(
            "%s: only %d validation images (%d training): one image moves validation accuracy by %.1f%%",
            where,
            len(splits.val),
            len(splits.train),
            100 / len(splits.val),
        )


def take_stratified(indices: np.ndarray, labels: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """A seeded, class-balanced subset of ``indices`` of size ``count`` (sorted), e.g. a calibration slice."""
    indices = np.asarray(indices)
    if count >= len(indices):
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(indices)
    # round-robin over classes keeps the slice balanced even when count is small
    by_class = [shuffled[labels[shuffled] == label] for label in np.unique(labels[indices])]
    picked: list[int] = []
    position = 0
    while len(picked) < count:
        for members in by_class:
            if position < len(members) and len(picked) < count:
                picked.append(int(members[position]))
        position += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


# --------------------------------------------------------------------------------------------- batches


def augment(batch: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with reflect padding and a random horizontal flip, per image, on an NCHW batch."""
    count, _, height, width = batch.shape
    padded = torch.nn.functional.pad(batch, (padding,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    rows = offsets[:, 0:1] + torch.arange(height)  # (N, H)
    cols = offsets[:, 1:2] + torch.arange(width)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_index = torch.arange(count)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def iterate_batches(
    data: ImageData,
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    augmented: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalized (images, labels) batches; randomness only from ``generator``."""
    indices = np.asarray(indices)
    if (shuffle or augmented) and generator is None:
        raise ValueError("shuffle/augment need an explicit torch.Generator")
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator).numpy()]
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        chunk = indices[start : start + batch_size]
        images, labels = data.tensors(chunk)
        if augmented:
            images = augment(images, generator)
        yield images, labels


def describe_data(data: ImageData, splits: Splits) -> dict:
    return {
        "spec": data.spec,
        "images": len(data),
        "image_shape": list(data.image_shape),
        "classes": data.classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "split": splits.describe(),
    }


def dump_description(path: str | os.PathLike, data: ImageData, splits: Splits) -> None:
    atomic_write_json(path, describe_data(data, splits))
