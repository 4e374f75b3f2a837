"""``shapes`` / ``shapes:SIZE``: a generated detection data set with exact boxes; nothing is downloaded.

``SHAPES_IMAGES`` (512) images of SIZE x SIZE pixels (default 128, from 32 to 256), each with 1 to 4
coloured rectangles, ellipses and triangles (three classes) on a textured background: smooth colour blobs,
stripes or a checkerboard, plus per-pixel noise. Objects do not overlap, so every box is the tight
bounding box of its object's drawn pixels -- exact, not an estimate.

Every number comes from integer arithmetic on a counter-based hash (splitmix64) of (seed, image, purpose):
no float maths, no library random-number stream (numpy's may change between versions), and no drawing
library (anti-aliasing differs between Pillow versions). The same seed gives the same pixels and boxes on
every machine; a test pins the digest of the first image.
"""

from __future__ import annotations

import numpy as np

from acp.detection_data.dataset import BACKGROUND, DetectionData, make_image
from acp.errors import UserError

SHAPES_CLASSES = (BACKGROUND, "rectangle", "ellipse", "triangle")
SHAPES_IMAGES = 512
SHAPES_SIZE = 128
SHAPES_SIZES = (32, 256)  # smallest and largest SIZE
SHAPES_SEED = 0
MAX_OBJECTS = 4
_MASK = (1 << 64) - 1


def _mix(value: int) -> int:
    """splitmix64's finalizer on a Python int: a well-spread 64-bit hash."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _mix_array(values: np.ndarray) -> np.ndarray:
    """:func:`_mix` on a uint64 array (array arithmetic wraps modulo 2**64, as the masks above do)."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


class _Draws:
    """Integers from a counter: draw k of stream ``key`` is ``_mix(key * 2**32 + k)``."""

    def __init__(self, *key: int) -> None:
        self.key = 0
        for part in key:
            self.key = _mix(self.key ^ (part & _MASK))
        self.count = 0

    def below(self, bound: int) -> int:
        self.count += 1
        return _mix((self.key + self.count) & _MASK) % bound

    def between(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``."""
        return low + self.below(high - low + 1)

    def noise(self, shape: tuple[int, ...], bound: int) -> np.ndarray:
        """An int64 array of values in ``[0, bound)``, one hash per element."""
        self.count += 1
        base = _mix((self.key + self.count) & _MASK)
        counters = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(base)
        return (_mix_array(counters) % np.uint64(bound)).astype(np.int64).reshape(shape)


def _background(draws: _Draws, size: int) -> np.ndarray:
    """int64 (size, size, 3) texture with values in [40, 215]."""
    kind = draws.below(3)
    rows = np.arange(size, dtype=np.int64)[:, None]
    cols = np.arange(size, dtype=np.int64)[None, :]
    if kind == 0:  # smooth blobs: a coarse grid of colours, bilinearly interpolated in integers
        cell = draws.between(max(4, size // 8), max(8, size // 3))
        grid = 60 + draws.noise((size // cell + 2, size // cell + 2, 3), 136)
        gy, fy = rows // cell, rows % cell
        gx, fx = cols // cell, cols % cell
        weights = [
            ((cell - fy) * (cell - fx), 0, 0),
            ((cell - fy) * fx, 0, 1),
            (fy * (cell - fx), 1, 0),
            (fy * fx, 1, 1),
        ]
        total = sum(weight[..., None] * grid[gy + dy, gx + dx] for weight, dy, dx in weights)
        texture = total // (cell * cell)
    else:
        colours = 60 + draws.noise((2, 3), 136)
        period = draws.between(3, max(4, size // 6))
        if kind == 1:  # stripes, horizontal, vertical or diagonal
            direction = draws.below(3)
            position = [rows + 0 * cols, cols + 0 * rows, rows + cols][direction]
            phase = (position // period) % 2
        else:  # checkerboard
            phase = (rows // period + cols // period) % 2
        texture = colours[phase]
    return texture + draws.noise((size, size, 3), 41) - 20


def _shape_mask(label: int, width: int, height: int, draws: _Draws) -> np.ndarray:
    """bool (height, width) pixels of one object filling its box (touching all four sides)."""
    # doubled pixel-centre coordinates keep every test in integers
    u = 2 * np.arange(width, dtype=np.int64)[None, :] + 1
    v = 2 * np.arange(height, dtype=np.int64)[:, None] + 1
    if label == 1:
        return np.ones((height, width), bool)
    if label == 2:
        du, dv = u - width, v - height
        return du * du * height * height + dv * dv * width * width <= width * width * height * height
    # triangle: apex somewhere on the top edge, base along the bottom edge, then flipped/turned
    apex = 2 * draws.below(width) + 1
    corners = [(apex, 1), (1, 2 * height - 1), (2 * width - 1, 2 * height - 1)]
    edges = [
        (bx - ax) * (v - ay) - (by - ay) * (u - ax)
        for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1])
    ]
    inside = np.logical_and.reduce([edge >= 0 for edge in edges]) | np.logical_and.reduce(
        [edge <= 0 for edge in edges]
    )
    if draws.below(2):
        inside = inside[::-1]
    if draws.below(2):
        inside = inside[:, ::-1]
    return np.ascontiguousarray(inside)


def _colour(draws: _Draws) -> np.ndarray:
    """A saturated colour: one channel high, one low, one anywhere."""
    channels = [draws.between(190, 255), draws.between(0, 60), draws.between(0, 255)]
    order = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][draws.below(6)]
    return np.asarray([channels[index] for index in order], dtype=np.int64)


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int) -> bool:
    x1, y1, x2, y2 = box
    return any(
        x1 < ox2 + gap and ox1 < x2 + gap and y1 < oy2 + gap and oy1 < y2 + gap
        for ox1, oy1, ox2, oy2 in others
    )


def _generate_one(seed: int, index: int, size: int) -> tuple[np.ndarray, list, list]:
    draws = _Draws(seed, index, size)
    canvas = _background(draws, size)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(draws.between(1, MAX_OBJECTS)):
        label = draws.between(1, len(SHAPES_CLASSES) - 1)
        width = draws.between(size // 8, size // 2)
        height = draws.between(size // 8, size // 2)
        for _attempt in range(20):
            x1, y1 = draws.below(size - width + 1), draws.below(size - height + 1)
            if not _overlaps((x1, y1, x1 + width, y1 + height), boxes, gap=2):
                break
        else:
            continue  # no room left for this object: the image keeps fewer
        mask = _shape_mask(label, width, height, draws)
        region = canvas[y1 : y1 + height, x1 : x1 + width]
        region[mask] = _colour(draws) + draws.noise((int(mask.sum()), 3), 25) - 12
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes.append((x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1))
        labels.append(label)
    return np.clip(canvas, 0, 255).astype(np.uint8), boxes, labels


def generate_shapes(
    count: int = SHAPES_IMAGES, size: int = SHAPES_SIZE, *, seed: int = SHAPES_SEED
) -> DetectionData:
    """``count`` generated images of ``size`` x ``size`` pixels (see the module docstring)."""
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    images = []
    for index in range(count):
        pixels[index], boxes, labels = _generate_one(seed, index, size)
        images.append(
            make_image(f"{index:04d}", "", size, size, boxes, labels, source=f"shapes image {index}")
        )
    spec = "shapes" if size == SHAPES_SIZE else f"shapes:{size}"
    if count != SHAPES_IMAGES or seed != SHAPES_SEED:
        spec += f" (count={count}, seed={seed})"
    return DetectionData(spec=spec, format="shapes", classes=SHAPES_CLASSES, images=images, pixels=pixels)


def load_shapes(spec: str) -> DetectionData:
    """The data set named by ``shapes`` or ``shapes:SIZE``."""
    size_text = spec.partition(":")[2] or str(SHAPES_SIZE)
    low, high = SHAPES_SIZES
    if not (size_text.isascii() and size_text.isdigit()) or not low <= int(size_text) <= high:
        raise UserError(f"data spec {spec!r}: SIZE must be an integer in [{low}, {high}], e.g. shapes:64")
    return generate_shapes(SHAPES_IMAGES, int(size_text))
