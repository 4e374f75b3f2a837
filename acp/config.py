"""Search-space files (TOML): loading, defaults and validation, in one place.

A config names the model and its weights, the data, the channel space (ignored layers, bounds,
rounding), and the budget; later sections tune clustering, the proxy, the search and finetuning. Every
problem is a :class:`UserError` naming the file and the field (``resnet20.toml: [space].round_to: ...``).
Relative paths inside a config are relative to the config file's own directory.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acp.errors import UserError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # what the check accepts, for the message
    is_path: bool = False


def _positive(value) -> bool:
    return value > 0


def _non_empty(value) -> bool:
    return value is None or bool(value.strip())


def _ratio(value) -> bool:
    return value is None or (math.isfinite(value) and 0 < value <= 1)


def _input_size(value) -> bool:
    return value is None or (len(value) == 3 and all(type(v) is int and v > 0 for v in value))


SCHEMA: dict[str, dict[str, Field]] = {
    "model": {
        "name": Field(
            str, None, lambda v: bool(v), "a registry name, torchvision name or package.module:factory"
        ),
        "num_classes": Field((int, type(None)), None, lambda v: v is None or v > 0, "a positive integer"),
        "weights": Field((str, type(None)), None, _non_empty, "a file path", is_path=True),
        "input_size": Field((list, type(None)), None, _input_size, "[channels, height, width]"),
        "kwargs": Field(dict, {}),
    },
    "data": {
        "spec": Field((str, type(None)), None, _non_empty, "a path or 'digits'", is_path=True),
        "split": Field(str, "auto", allowed="'auto', 'shared', 'tail:K' or 'random:F'"),
        "seed": Field(int, 0),
    },
    "space": {
        "ignored_layers": Field(
            list, [], lambda v: all(isinstance(x, str) for x in v), "a list of names/globs"
        ),
        "round_to": Field(int, 1, _positive, "a positive integer"),
        "min_keep": Field(float, 0.1, lambda v: 0 < v <= 1, "a ratio in (0, 1]"),
    },
    "budget": {
        "flops": Field((float, type(None)), None, _ratio, "a ratio in (0, 1]"),
        "params": Field((float, type(None)), None, _ratio, "a ratio in (0, 1]"),
    },
    "finetune": {
        "epochs": Field(int, 30, _positive, "a positive integer"),
        "batch_size": Field(int, 128, _positive, "a positive integer"),
        "lr": Field(float, 0.02, lambda v: 0 < v < 10, "a learning rate in (0, 10)"),
        "weight_decay": Field(float, 5e-4, lambda v: v >= 0, "a number >= 0"),
        "schedule": Field(
            str,
            "cosine",
            lambda v: v in ("cosine", "onecycle", "constant"),
            "'cosine', 'onecycle' or 'constant'",
        ),
        "label_smoothing": Field(float, 0.0, lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "distill": Field(bool, False),
        "temperature": Field(float, 4.0, _positive, "a positive number"),
        "alpha": Field(float, 0.9, lambda v: 0 <= v <= 1, "a weight in [0, 1]"),
        "seed": Field(int, 0),
    },
    # [search]: the PSO (acp.search.settings.SearchSettings re-validates ranges and combinations).
    "search": {
        "particles": Field(int, 12, lambda v: v >= 2, "an integer >= 2"),
        "iterations": Field(int, 30, _positive, "a positive integer"),
        "seed": Field(int, 0, lambda v: v >= 0, "an integer >= 0"),
        "topology": Field(
            str, "star", lambda v: v in ("star", "ring", "von_neumann"), "'star', 'ring' or 'von_neumann'"
        ),
        "neighbors": Field(int, 3, _positive, "a positive integer"),
        "inertia_start": Field(float, 0.729, lambda v: 0 <= v <= 4, "a number in [0, 4]"),
        "inertia_end": Field(float, 0.4, lambda v: 0 <= v <= 4, "a number in [0, 4]"),
        "c1": Field(float, 1.49445, lambda v: 0 <= v <= 4, "a number in [0, 4]"),
        "c2": Field(float, 1.49445, lambda v: 0 <= v <= 4, "a number in [0, 4]"),
        "velocity_clamp": Field(float, 0.2, lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "boundary": Field(
            str,
            "nearest",
            lambda v: v in ("nearest", "reflective", "shrink", "intermediate", "periodic"),
            "'nearest', 'reflective', 'shrink', 'intermediate' or 'periodic'",
        ),
        "velocity_strategy": Field(
            str,
            "unmodified",
            lambda v: v in ("unmodified", "adjust", "invert", "zero"),
            "'unmodified', 'adjust', 'invert' or 'zero'",
        ),
        "init_spread": Field(float, 0.1, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "random_particles": Field(int, 2, lambda v: v >= 0, "an integer >= 0"),
        "patience": Field(int, 0, lambda v: v >= 0, "an integer >= 0 (0: off)"),
        "criterion": Field(str, "l2", lambda v: bool(v), "a criterion name"),
        "tolerance": Field(float, 0.01, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "workers": Field(int, 1, _positive, "a positive integer"),
        "backend": Field(str, "loky", lambda v: v in ("loky", "dask", "ray"), "'loky', 'dask' or 'ray'"),
        "dask_scheduler": Field((str, type(None)), None),
        "scheduler_timeout": Field(float, 10.0, _positive, "a positive number of seconds"),
        "time_limit": Field((str, int, float, type(None)), None),
    },
    # [proxy]: how the search scores a candidate (acp.proxy.ProxySettings re-validates; the search pins
    # threads to 1 unless set, so serial and parallel runs give the same scores bit for bit).
    "proxy": {
        "calibration_batches": Field(int, 20, lambda v: v >= 0, "an integer >= 0"),
        "calibration_batch_size": Field(int, 64, _positive, "a positive integer"),
        "eval_batch_size": Field(int, 500, _positive, "a positive integer"),
        "validation_images": Field(int, 2000, _positive, "a positive integer"),
        "recalibrate_bn": Field(bool, True),
        "score": Field(str, "accuracy", lambda v: v in ("accuracy", "loss"), "'accuracy' or 'loss'"),
        "finetune_steps": Field(int, 0, lambda v: v >= 0, "an integer >= 0"),
        "finetune_lr": Field(float, 0.01, lambda v: v >= 0, "a number >= 0"),
        "threads": Field((int, type(None)), None, lambda v: v is None or v > 0, "a positive integer"),
    },
}


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
        bool: "true/false",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds if k is not type(None))


def _coerce(value: Any, field: Field) -> Any:
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise TypeError
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # TOML integers are unbounded; a float field cannot hold 10**400
            raise TypeError from None
    if not isinstance(value, kinds):
        raise TypeError
    return value


def validate(document: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> dict:
    """Check a parsed config against SCHEMA, fill defaults, resolve relative paths. Returns a new dict."""
    if not isinstance(document, Mapping):
        raise UserError(f"{source}: a config must be a TOML table")
    resolved: dict[str, dict[str, Any]] = {}
    for section, value in document.items():
        if section not in SCHEMA:
            raise UserError(f"{source}: unknown section [{section}]{_hint(section, SCHEMA)}")
        if not isinstance(value, Mapping):
            raise UserError(f"{source}: [{section}] must be a table")
    for section, fields in SCHEMA.items():
        given = document.get(section, {})
        out: dict[str, Any] = {}
        for key in given:
            if key not in fields:
                raise UserError(f"{source}: unknown key [{section}].{key}{_hint(key, fields)}")
        for key, field in fields.items():
            if key not in given:
                out[key] = copy.deepcopy(field.default)
                continue
            value = given[key]
            where = f"{source}: [{section}].{key}"
            try:
                value = _coerce(value, field)
            except TypeError:
                raise UserError(f"{where} must be {_type_name(field.kind)}, got {value!r}") from None
            if field.check is not None and not field.check(value):
                raise UserError(f"{where} = {value!r} is not allowed (expected {field.allowed})")
            if field.is_path and value is not None and base_dir is not None and not _is_special_spec(value):
                path = Path(value).expanduser()
                value = os.path.normpath(path if path.is_absolute() else (base_dir / path))
            out[key] = value
        resolved[section] = out
    if resolved["model"]["name"] is None:
        raise UserError(f"{source}: [model].name is required")
    return resolved


def _is_special_spec(value: str) -> bool:
    return value == "digits" or value.startswith("digits:")


def _hint(name: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


def load_config(path: str | Path) -> dict:
    """Read and validate a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: TOML syntax error: {error}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise UserError(f"config file {path} cannot be read: {error.strerror or error}") from None
    config = validate(document, source=str(path), base_dir=path.resolve().parent)
    config["_source"] = str(path)
    return config


def config_from_model(name: str, **overrides: Any) -> dict:
    """A config for a bare model name (``acp info resnet20_cifar``)."""
    document = {"model": {"name": name, **overrides}}
    return validate(document, source=f"model {name!r}")


def dump_toml(config: Mapping[str, Any]) -> str:
    """Serialize a resolved config back to TOML (None values are omitted, as TOML has no null)."""
    lines: list[str] = []
    for section, fields in config.items():
        if section.startswith("_") or not isinstance(fields, Mapping):
            continue
        lines.append(f"[{_toml_key(section)}]")
        for key, value in fields.items():
            if value is None:
                continue
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_key(key: object) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are valid in TOML basic strings; TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.date, datetime.time)):  # TOML date/time literals (kwargs may hold them)
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
