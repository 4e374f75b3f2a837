"""Data specs -> decoded uint8 image arrays, deterministic splits, and fast batches of tensors.

A data SPEC is
- a path to an ImageFolder tree (``root/<class>/<image>``), e.g. ``../shared/data/cifar10/train``,
- a path to torchvision's on-disk CIFAR-10/100 files (``cifar-10-batches-py`` / ``cifar-100-python`` or a
  directory containing one; detected, never downloaded),
- ``digits`` or ``digits:SIZE``: scikit-learn's bundled 8x8 digits, upsampled to SIZE x SIZE (default 32)
  and replicated to 3 channels so every CIFAR model accepts them.

An ImageFolder whose decoded size (images x H x W x 3 bytes, estimated from the file count and the first
image's size) is within the cache limit (``[data].cache_limit_gb``, see :mod:`acp.datacache`) is decoded
once and cached on disk as a raw uint8 array keyed by the path and every file's size and mtime, so an
epoch over CIFAR spends its time in the model, not in JPEG decoding. A larger folder is *streamed*: its
images are decoded when a batch needs them, by a torch DataLoader with ``[data].loader_workers`` worker
processes; only a small description (its shape and statistics) is cached. Both are one
:class:`ImageData`: ``tensors(indices)`` (streamed: decoded on the spot) and :func:`iterate_batches`.

Batches are built on tensors: uint8 images (indexed from the array, or decoded), converted, normalized,
and (for training) augmented with a random crop with padding and a horizontal flip drawn from an explicit
``torch.Generator``. The order and the augmentation are drawn in the main process and workers only decode
the batches they are handed, so the batches are bit-identical whether streamed (with any number of
workers) or cached.

All images of an ImageFolder must have one size (acp does not resize): a cached folder checks this while
decoding, a streamed one reads every file's header once (the verdict is cached with its description);
either way the error names the first image of another size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from acp.datacache import GB, default_cache_dir, image_cache_files
from acp.errors import UserError
from acp.fileio import atomic_write, atomic_write_json
from acp.settings import cache_limit_gb as resolve_cache_limit

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Named splits: "shared" is the split of ../shared/models (last 500 files per class are validation).
NAMED_SPLITS = {"shared": "tail:500", "cifar10-shared": "tail:500"}
STATS_SAMPLE = 10_000  # statistics: every k-th image, k = max(1, N // STATS_SAMPLE) (10,000-20,000 of N)
DESCRIPTION_FORMAT = "acp.imagefolder/1"


@dataclass
class ImageData:
    """Images of one data spec with integer labels: decoded, uint8 ``(N, H, W, C)``, or streamed."""

    images: np.ndarray | None  # None: streamed from ``stream``
    labels: np.ndarray
    classes: list[str]
    spec: str
    files: list[str] | None = None  # relative paths in sorted order (ImageFolder only)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    test: ImageData | None = field(default=None, repr=False)  # official test split (CIFAR format only)

    stream: FolderStream | None = field(default=None, repr=False)  # set when images is None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        """Whether the images are decoded from their files when needed (no array in memory)."""
        return self.images is None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as a model sees it."""
        height, width, channels = self.stream.shape if self.images is None else self.images.shape[1:]
        return (channels, height, width)

    def tensors(self, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 NCHW images and int64 labels for ``indices`` (all when None), contiguous.
        A streamed set decodes them (in memory: meant for slices, e.g. calibration images)."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        return self.normalize(self.uint8(indices)), torch.from_numpy(self.labels[indices])

    def uint8(self, indices: np.ndarray) -> torch.Tensor:
        """The uint8 NHWC images at ``indices``."""
        if self.images is None:
            return torch.from_numpy(self.stream.decode(indices))
        return torch.from_numpy(self.images[indices])

    def uint8_batches(self, chunks: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """The uint8 NHWC images of each chunk of indices, in order (streamed: decoded by the workers)."""
        if self.images is None:
            yield from self.stream.batches(chunks)
        else:
            for chunk in chunks:
                yield torch.from_numpy(self.images[chunk])

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


def load_data(
    spec: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    cache_limit_gb: float | None = None,
    loader_workers: int = 2,
) -> ImageData:
    """The images named by ``spec`` (see module docstring); uses the on-disk cache when valid.

    ``cache_limit_gb``: an ImageFolder larger than this decoded is streamed (None: ``$ACP_CACHE_LIMIT_GB``
    or the default, :func:`acp.datacache.cache_limit_gb`); ``loader_workers``: its decoding processes."""
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
    return _load_image_folder(path, spec, cache_dir, cache_limit_gb, loader_workers)


def _load_digits(spec: str) -> ImageData:
    from sklearn.datasets import load_digits

    size_text = spec.partition(":")[2] or "32"
    if not (size_text.isascii() and size_text.isdigit()) or not 8 <= int(size_text) <= 256:
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


def decode_image(root: Path, relative: str) -> np.ndarray:
    """One image file as a uint8 RGB ``(H, W, 3)`` array -- the one decode of cached and streamed sets."""
    from PIL import Image

    try:
        with Image.open(root / relative) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as error:
        raise UserError(f"image {root / relative} cannot be decoded: {error}") from None


def _image_size(root: Path, relative: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(root / relative) as image:
            return image.size
    except Exception as error:
        raise UserError(f"image {root / relative} cannot be decoded: {error}") from None


def _size_error(root: Path, relative: str, first: str, size, first_size) -> UserError:
    return UserError(
        f"image {root / relative} is {size[0]}x{size[1]}, but {root / first} is "
        f"{first_size[0]}x{first_size[1]}: all images must have one size"
    )


def decode_images(root: str | os.PathLike, files: Sequence[str], *, threads: int = 2) -> np.ndarray:
    """Decode image files (RGB) into one uint8 ``(N, H, W, 3)`` array; all images must share a size."""
    root = Path(root)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        decoded = list(pool.map(lambda relative: decode_image(root, relative), files, chunksize=256))
    first_shape = decoded[0].shape
    for relative, image in zip(files, decoded):
        if image.shape != first_shape:
            size, first_size = image.shape[1::-1], first_shape[1::-1]
            raise _size_error(root, relative, files[0], size, first_size)
    return np.ascontiguousarray(np.stack(decoded))


def _folder_fingerprint(root: Path, files: Sequence[str]) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode())
    for relative in files:
        stat = os.stat(root / relative)
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------------------------- streaming


class _FolderImages(torch.utils.data.Dataset):
    """Map-style dataset of a folder's decoded images (what a DataLoader worker runs). A bad image is
    returned as its UserError, so the main process raises it as one line, not wrapped by the worker."""

    def __init__(self, root: Path, files: Sequence[str], shape: tuple[int, int, int]):
        self.root, self.files, self.shape = root, files, shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            image = decode_image(self.root, self.files[index])
        except UserError as error:
            return error
        if image.shape != self.shape:
            return _size_error(
                self.root, self.files[index], self.files[0], image.shape[1::-1], self.shape[1::-1]
            )
        return image


def _stack(items: list):
    for item in items:
        if isinstance(item, UserError):
            return item
    return torch.from_numpy(np.stack(items))


@dataclass
class FolderStream:
    """How a streamed ImageFolder is read: its files, their one shape ``(H, W, 3)``, decoding workers."""

    root: Path
    files: list[str]
    shape: tuple[int, int, int]
    workers: int = 2

    def decode(self, indices: np.ndarray, *, threads: int = 2) -> np.ndarray:
        """The images at ``indices`` as one uint8 ``(len, H, W, 3)`` array (threads in this process)."""
        dataset = _FolderImages(self.root, self.files, self.shape)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            decoded = list(pool.map(dataset.__getitem__, (int(i) for i in np.asarray(indices))))
        batch = _stack(decoded) if decoded else torch.empty((0, *self.shape), dtype=torch.uint8)
        if isinstance(batch, UserError):
            raise batch
        return batch.numpy()

    def batches(self, chunks: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """The uint8 images of each chunk, in the chunks' order, decoded by ``workers`` processes (0: here).
        Workers only decode; which images form a batch was decided before, so the result does not depend
        on the number of workers."""
        if not len(chunks):
            return
        loader = torch.utils.data.DataLoader(
            _FolderImages(self.root, self.files, self.shape),
            batch_sampler=[[int(i) for i in chunk] for chunk in chunks],
            num_workers=self.workers,
            collate_fn=_stack,
            # its own generator: a DataLoader draws its workers' base seed from torch's global RNG
            # otherwise, which would shift dropout & co. against the cached path (workers draw nothing)
            generator=torch.Generator().manual_seed(0),
        )
        for batch in loader:
            if isinstance(batch, UserError):
                raise batch
            yield batch


# --------------------------------------------------------------------------------------------- folders


def _load_image_folder(
    root: Path,
    spec: str,
    cache_dir: str | os.PathLike | None,
    limit_gb: float | None,
    loader_workers: int,
) -> ImageData:
    files, labels, classes = list_image_folder(root)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _folder_fingerprint(root, files)
    cache_file, description_file = image_cache_files(cache_root, key)
    limit, limit_source = resolve_cache_limit(limit_gb)
    width, height = _image_size(root, files[0])
    shape = (height, width, 3)
    decoded_bytes = len(files) * height * width * 3
    if decoded_bytes > limit * GB:
        log.info(
            "streaming %d images under %s: %.2f GB decoded is over the cache limit of %g GB (%s)",
            len(files),
            root,
            decoded_bytes / GB,
            limit,
            limit_source,
        )
        return _streamed_folder(root, spec, files, labels, classes, shape, description_file, loader_workers)
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
        try:
            atomic_write(cache_file, lambda stream: np.save(stream, images, allow_pickle=False), binary=True)
            _write_description(description_file, root, files, images.shape[1:], "cached")
        except OSError as error:  # a read-only home must not stop training
            log.warning("could not write image cache %s: %s", cache_file, error)
    mean, std = (
        (CIFAR10_MEAN, CIFAR10_STD)
        if _looks_like_cifar10(classes, images.shape[1:])
        else _channel_stats(images)
    )
    return ImageData(images, labels, classes, spec, files=files, mean=mean, std=std)


def _write_description(path: Path, root: Path, files, shape, mode: str, **more) -> None:
    document = {
        "format": DESCRIPTION_FORMAT,
        "root": str(root.resolve()),
        "mode": mode,
        "images": len(files),
        "shape": [int(v) for v in shape],
        "decoded_bytes": int(len(files) * int(np.prod(shape))),
        **more,
    }
    atomic_write_json(path, document)


def _streamed_folder(root, spec, files, labels, classes, shape, description_file, workers) -> ImageData:
    stream = FolderStream(root, files, shape, workers)
    described = _read_description(description_file, shape, len(files))
    if described is not None:
        mean, std = tuple(described["mean"]), tuple(described["std"])
    else:
        _check_sizes(root, files, shape)
        if _looks_like_cifar10(classes, shape):
            mean, std = CIFAR10_MEAN, CIFAR10_STD
        else:
            mean, std = _sample_stats(stream.decode, len(files))
        try:
            _write_description(
                description_file, root, files, shape, "streamed", mean=list(mean), std=list(std)
            )
        except OSError as error:
            log.warning("could not write image cache description %s: %s", description_file, error)
    return ImageData(None, labels, classes, spec, files=files, mean=mean, std=std, stream=stream)


def _read_description(path: Path, shape, count: int) -> dict | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fits = (
        isinstance(document, dict)
        and document.get("format") == DESCRIPTION_FORMAT
        and document.get("mode") == "streamed"
        and document.get("shape") == list(shape)
        and document.get("images") == count
        and all(len(document.get(name) or []) == 3 for name in ("mean", "std"))
    )
    return document if fits else None


def _check_sizes(root: Path, files: Sequence[str], shape, *, threads: int = 2) -> None:
    """UserError naming the first image whose size is not ``shape`` (headers only: no decoding)."""
    expected = (shape[1], shape[0])
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for relative, size in zip(files, pool.map(lambda f: _image_size(root, f), files, chunksize=256)):
            if tuple(size) != expected:
                raise _size_error(root, relative, files[0], size, expected)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _looks_like_cifar10(classes: list[str], shape: tuple[int, ...]) -> bool:
    # The shared base models were trained with the canonical CIFAR-10 statistics; use them exactly.
    return classes == CIFAR10_CLASSES and tuple(shape) == (32, 32, 3)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _sample_stats(lambda indices: images[indices], len(images))


def _sample_stats(read, count: int, chunk: int = 64) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (rounded to 4 places) of every k-th of ``count`` images (k = count //
    ``STATS_SAMPLE``, at least 1), ``read(indices)`` giving them as uint8 NHWC. Exact integer sums over
    chunks: the same figures for a cached and a streamed set, whatever the chunks, in bounded memory."""
    sample = np.arange(0, count, max(1, count // STATS_SAMPLE))
    total, squares, values = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), 0
    for start in range(0, len(sample), chunk):
        images = read(sample[start : start + chunk])
        total += images.sum(axis=(0, 1, 2), dtype=np.int64)
        squares += np.square(images, dtype=np.uint16).sum(axis=(0, 1, 2), dtype=np.int64)
        values += images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / values / 255.0
    std = np.sqrt(np.maximum(squares / values / 255.0**2 - mean**2, 0.0))
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


def split_fraction(method: str, argument: str) -> float:
    """F of a ``random:F`` split: a number strictly between 0 and 1, else the split's UserError."""
    try:
        fraction = float(argument)
    except ValueError:
        fraction = -1.0
    if not 0.0 < fraction < 1.0:
        raise UserError(f"split {method!r}: random:F needs a fraction 0 < F < 1")
    return fraction


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
        if not (argument.isascii() and argument.isdigit()) or int(argument) < 1:
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
        fraction = split_fraction(method, argument)
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
    """Yield normalized (images, labels) batches; randomness only from ``generator`` (drawn here, in the
    main process: a streamed set's workers only decode the batches they are given)."""
    indices = np.asarray(indices)
    if (shuffle or augmented) and generator is None:
        raise ValueError("shuffle/augment need an explicit torch.Generator")
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator).numpy()]
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    chunks = [indices[start : start + batch_size] for start in range(0, stop, batch_size)]
    for chunk, uint8 in zip(chunks, data.uint8_batches(chunks)):
        images, labels = data.normalize(uint8), torch.from_numpy(data.labels[chunk])
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
