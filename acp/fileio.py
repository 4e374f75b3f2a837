"""Atomic writes and safe loading: the only ways acp puts files on disk or reads weights.

Every file acp writes goes through a temporary file in the same directory and ``os.replace``, so a
crash (or a full disk) leaves either the old file or the new one, never half of one. Weights are read
with ``torch.load(weights_only=True)``: a pickle that would execute code is refused, not run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from acp.errors import UserError


def require_fresh_output(path: str | os.PathLike, hint: str, *, flag: str = "--out") -> Path:
    """``flag``'s directory must be new or empty: UserError otherwise (``hint`` says what to do)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a directory; {hint}")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{flag} {path} exists and is not empty; {hint}")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda stream: stream.write(text))


def atomic_write_json(path: str | os.PathLike, document: Any) -> Path:
    return atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda stream: torch.save(obj, stream), binary=True)


def load_checkpoint(path: str | os.PathLike, *, what: str = "weights") -> Any:
    """``torch.load(path, weights_only=True)`` with user errors that name the file.

    Refuses pickles that reference anything beyond tensors and plain containers, without running them.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = " ".join(str(error).split())
        if "Unsupported global" in reason or "GLOBAL" in reason:
            reason = "it contains pickled Python objects that a weights-only load refuses to execute"
        elif "WeightsUnpickler error:" in reason:  # torch's hint to retry unsafely must not reach the user
            detail = reason.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
            reason = f"corrupted or not a PyTorch file ({detail.strip()})"
        elif "weights_only" in reason:
            reason = "it contains pickled Python objects that a weights-only load refuses to execute"
        raise UserError(f"{what} file {path} is not a loadable PyTorch checkpoint: {reason[:200]}") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``path`` (also unwraps ``{"state_dict": ...}`` / ``{"model": ...}``)."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors)")
    return obj


def load_weights_into(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a state_dict file into ``model`` strictly; mismatches become a user error naming the first one."""
    return load_state_into(model, load_state_dict_file(path), path)


def load_state_into(model: torch.nn.Module, state: dict, path: str | os.PathLike) -> torch.nn.Module:
    """Load an already-read state_dict (from file ``path``, for messages) into ``model`` strictly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else ""
        if unexpected:
            detail += ("; " if detail else "") + f"unexpected {unexpected[:3]}"
        raise UserError(f"weights file {path} does not fit the model: {detail}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"weights file {path} does not fit the model: {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model
