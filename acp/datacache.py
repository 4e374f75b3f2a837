"""Where acp caches what it decoded or measured, how large a data set may be to be cached, and listing
and clearing the cache (``acp cache info|clear``). Imports no torch, so ``acp cache`` answers at once.

The size limit of a cached data set is :func:`acp.settings.cache_limit_gb`. The cache
directory is ``$ACP_CACHE_DIR``, else ``$XDG_CACHE_HOME/acp``, else ``~/.cache/acp``. It holds

- ``imagefolder-<key>.npy``: an ImageFolder decoded into one uint8 ``(N, H, W, 3)`` array (only data sets
  whose decoded size is within the cache limit),
- ``imagefolder-<key>.json``: what that key is (the folder, image count and shape, cached or streamed) and
  the normalization statistics of a streamed folder, so a second load reads no image to get them,
- ``latency/``: measured latency tables (:mod:`acp.latency.cache`).

``<key>`` hashes the folder's path and every file's name, size and modification time: an edited folder
gets a new key and is decoded again; the stale files stay until ``acp cache clear``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
IMAGE_PREFIX = "imagefolder-"
LATENCY_DIR = "latency"
KINDS = ("images", "latency")


def default_cache_dir() -> Path:
    base = os.environ.get("ACP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "acp"
    )
    return Path(base)


def image_cache_files(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """(decoded array, description) of the ImageFolder with ``key``."""
    return cache_dir / f"{IMAGE_PREFIX}{key}.npy", cache_dir / f"{IMAGE_PREFIX}{key}.json"


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    kind: str  # "images" or "latency"
    bytes: int
    what: str  # one line: which folder / table it is


def cache_entries(cache_dir: Path | None = None) -> list[CacheEntry]:
    """acp's files in the cache directory (sorted by kind, then name); nothing else there is listed."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    entries: list[CacheEntry] = []
    if cache_dir.is_dir():
        for path in sorted(cache_dir.glob(f"{IMAGE_PREFIX}*")):
            if path.is_file() and path.suffix in (".npy", ".json"):
                entries.append(CacheEntry(path, "images", path.stat().st_size, _describe_image_file(path)))
    latency_dir = cache_dir / LATENCY_DIR
    if latency_dir.is_dir():
        for path in sorted(latency_dir.glob("*.json")):
            if path.is_file():
                entries.append(CacheEntry(path, "latency", path.stat().st_size, _describe_latency(path)))
    return entries


def clear_cache(cache_dir: Path | None = None, kinds: tuple[str, ...] = KINDS) -> list[CacheEntry]:
    """Remove acp's cache files of ``kinds``; returns what was removed (other files are left alone)."""
    removed = []
    for entry in cache_entries(cache_dir):
        if entry.kind in kinds:
            try:
                entry.path.unlink()
            except FileNotFoundError:  # removed meanwhile by another process
                continue
            removed.append(entry)
    return removed


def _read_json(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _describe_image_file(path: Path) -> str:
    if path.suffix == ".npy":
        shape = _npy_shape(path)
        described = _read_json(path.with_suffix(".json")) or {}
        source = described.get("root", "folder not recorded")
        return f"decoded array {'x'.join(map(str, shape)) if shape else '(unreadable)'} of {source}"
    document = _read_json(path)
    if document is None:
        return "unreadable description"
    shape = "x".join(str(v) for v in document.get("shape", []))
    return (
        f"{document.get('mode', '?')}: {document.get('images', '?')} images {shape} "
        f"({document.get('decoded_bytes', 0) / GB:.2f} GB decoded) of {document.get('root', '?')}"
    )


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    import numpy as np

    try:
        with open(path, "rb") as stream:
            major, _ = np.lib.format.read_magic(stream)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(stream)
        return tuple(shape)
    except (OSError, ValueError):
        return None


def _describe_latency(path: Path) -> str:
    # latency-<model>-<runtime>-b<batch>-<digest>.json (acp.latency.cache.cache_file)
    return "latency table " + path.stem.removeprefix("latency-").rpartition("-")[0]
