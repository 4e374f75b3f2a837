"""The Architecture document: which channels of which model survive, as plain JSON (``best_arch.json``).

An architecture file is data only: it is parsed with :mod:`json` (no pickles, nothing imported or
executed) and validated in one place, :func:`_parse`, which tracks the field path so every failure is a
one-line :class:`~acp.errors.UserError` such as
``runs/a/best_arch.json: groups[3].keep: index 70 out of range for full_width 64``.
Checks that need the model (group ids, allowed widths, the cost model) live in :func:`_check_against`.
An optional ``preprocessing`` object records how images were prepared for the model (mean, std, input
size, class names; :mod:`acp.core.preprocessing`): files without it load, a present one is validated.

Equality: ``==`` compares every field, including ``provenance["created"]`` (a timestamp, may be None).
Use :meth:`Architecture.content_equal` to ask whether two architectures are the same apart from when
they were made (determinism tests do this).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from acp.core.document import (
    Field,
    describe,
    expect_array,
    expect_int,
    expect_number,
    expect_object,
    expect_str,
    json_data,
    optional,
    reject_unknown,
    show,
)
from acp.core.preprocessing import Preprocessing, check_against_model, parse_preprocessing
from acp.errors import UserError
from acp.fileio import atomic_write_json
from acp.settings import SpaceSettings

SCHEMA = "acp.architecture/1"
MAX_FILE_BYTES = 64 * 2**20  # far above any real architecture; stops a wrong path from filling memory
SOURCES = ("search", "cluster", "uniform", "manual")
BUDGET_KEYS = ("flops", "params")
LATENCY_BUDGET_KEYS = ("latency", "latency_ms")  # present only when a latency budget was given
# "latency": where a latency budget's predictions were measured, and the prediction for this architecture
LATENCY_KEYS = ("runtime", "batch_size", "threads", "cpu", "base_ms", "predicted_ms")
# after a search measured its winner against the base model (acp.latency.verify): what it measured
MEASURED_LATENCY_KEYS = (
    "measured_ms",
    "base_measured_ms",
    "measured_ratio",
    "measured_budget_met",
    "tolerance",
    "searched_widths",
    "measurements",
)
SPACE_DEFAULTS = SpaceSettings().to_dict()
PROVENANCE_KEYS = (
    "source",
    "seed",
    "criterion",
    "evaluations",
    "proxy_score",
    "finalists",  # how many finalists were re-scored (acp.search.study); the winner's rank among them
    "proxy_rank",  # by proxy score, and its finalist score
    "finalist_score",
    "acp_version",
    "created",
)
_TOP_KEYS = ("schema", "model", "base_macs", "base_params", "macs", "params", "budget", "space", "groups")


@dataclass(frozen=True)
class ModelIdentity:
    """Which unpruned network an architecture applies to: ``create_model(name, num_classes, **kwargs)``."""

    name: str
    num_classes: int | None
    input_size: tuple[int, int, int]  # (channels, height, width)
    kwargs: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def for_model(cls, name: str, num_classes: int | None = None, input_size=None, **kwargs) -> ModelIdentity:
        """Identity with the registry's default input size when ``input_size`` is not given."""
        from acp.models import default_input_size

        size = input_size if input_size is not None else default_input_size(name)
        if size is None:
            raise UserError(f"model {name!r}: input size unknown; give input_size=(channels, height, width)")
        return cls(name, num_classes, tuple(size), dict(kwargs))


@dataclass(frozen=True)
class GroupChoice:
    """One channel group's outcome: ``keep`` holds the sorted, unique kept indices (``len == width``)."""

    id: str
    full_width: int
    width: int
    keep: tuple[int, ...]


@dataclass(frozen=True)
class Architecture:
    """A pruned network: every group of the model's ChannelSpace, in space order, with its kept channels."""

    model: ModelIdentity
    groups: tuple[GroupChoice, ...]
    base_macs: int
    base_params: int
    macs: int
    params: int
    budget: dict  # {"flops": ratio | None, "params": ratio | None}
    space: dict  # {"round_to": int, "min_keep": float, "ignored_layers": [str]}: rebuilds the ChannelSpace
    provenance: dict  # PROVENANCE_KEYS; unknown -> None
    latency: dict | None = None  # LATENCY_KEYS, for an architecture searched under a latency budget
    preprocessing: Preprocessing | None = None  # how images were prepared for the model; None: not recorded

    @property
    def widths(self) -> dict[str, int]:
        return {group.id: group.width for group in self.groups}

    @property
    def keep(self) -> dict[str, tuple[int, ...]]:
        return {group.id: group.keep for group in self.groups}

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.base_macs

    @property
    def params_ratio(self) -> float:
        return self.params / self.base_params

    def summary_rows(self) -> list[tuple[str, int, int]]:
        """``(group id, full width, kept width)`` per group, for printing."""
        return [(group.id, group.full_width, group.width) for group in self.groups]

    def content_equal(self, other: Architecture) -> bool:
        """Equal in everything except ``provenance["created"]``."""
        mine, theirs = self.to_dict(), other.to_dict()
        for document in (mine, theirs):
            document["provenance"].pop("created", None)
        return mine == theirs

    def to_dict(self) -> dict:
        """The JSON document: schema first, groups last, a fresh copy (mutating it leaves ``self`` alone)."""
        identity = self.model
        return {
            "schema": SCHEMA,
            "model": {
                "name": identity.name,
                "num_classes": identity.num_classes,
                "input_size": list(identity.input_size),
                "kwargs": copy.deepcopy(identity.kwargs),
            },
            "base_macs": self.base_macs,
            "base_params": self.base_params,
            "macs": self.macs,
            "params": self.params,
            "budget": copy.deepcopy(self.budget),
            "space": copy.deepcopy(self.space),
            "provenance": copy.deepcopy(self.provenance),
            **({} if self.latency is None else {"latency": copy.deepcopy(self.latency)}),
            **({} if self.preprocessing is None else {"preprocessing": self.preprocessing.to_dict()}),
            "groups": [
                {"id": g.id, "full_width": g.full_width, "width": g.width, "keep": list(g.keep)}
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, doc: Any, *, source: str = "<dict>") -> Architecture:
        """Validate a parsed JSON document (anything at all) and build the Architecture; UserError if bad."""
        return _parse(doc, Field(str(source)))

    def save(self, path: str | os.PathLike) -> Path:
        """Validate, then write atomically as indented JSON (refuses non-finite floats, non-JSON values)."""
        document = _parse(self.to_dict(), Field(str(path))).to_dict()
        return atomic_write_json(path, document)

    @classmethod
    def load(cls, path: str | os.PathLike, space=None, *, model_name: str | None = None) -> Architecture:
        """Read and validate an architecture file; also check it against ``space``/``model_name`` if given."""
        at = Field(str(path))
        architecture = _parse(_read_json(Path(path), at), at)
        if space is not None:
            _check_against(architecture, space, model_name, at)
        elif model_name is not None and architecture.model.name != model_name:
            _wrong_model(architecture, model_name, at)
        return architecture

    def with_preprocessing(self, preprocessing: Preprocessing | None) -> Architecture:
        """A copy carrying ``preprocessing`` (checked against the model's input size and classes)."""
        at = Field("<with_preprocessing>")
        if preprocessing is not None:
            if not isinstance(preprocessing, Preprocessing):
                at.fail(f"expected a Preprocessing, got {describe(preprocessing)}")
            check_against_model(at, preprocessing, self.model.input_size, self.model.num_classes)
        return dataclasses.replace(self, preprocessing=preprocessing)

    def validate_against(self, space, model_name: str | None = None, *, source="<architecture>") -> None:
        """Raise UserError unless this fits ``space`` exactly (model, groups, widths, recorded costs)."""
        at = Field(source)
        _parse(self.to_dict(), at)
        _check_against(self, space, model_name, at)

    @classmethod
    def from_widths(
        cls,
        space,
        identity: ModelIdentity,
        widths: Mapping[str, int] | Sequence[int],
        keep: Mapping[str, Sequence[int]],
        *,
        budget: Mapping | None = None,
        space_settings: Mapping | None = None,
        provenance: Mapping | None = None,
        latency: Mapping | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> Architecture:
        """Build a validated Architecture; MACs/params come from ``space.cost``.

        ``widths`` is a mapping id -> width or a sequence in space order. ``keep`` maps id -> kept indices
        (any order; they are sorted); a group at full width may be left out. Missing budget keys are None,
        missing space settings take ChannelSpace.build's defaults, and provenance gets ``acp_version`` and
        ``created`` (UTC, ISO 8601) unless given (pass ``created=None`` for a timestamp-free document).
        """
        from acp import __version__

        at = Field("<from_widths>")
        if not isinstance(identity, ModelIdentity):
            at["identity"].fail(f"expected a ModelIdentity, got {type(identity).__name__}")
        options = {
            "budget": budget,
            "space_settings": space_settings,
            "provenance": provenance,
            "latency": latency,
        }
        for name, value in options.items():
            if value is not None and not isinstance(value, Mapping):
                at[name].fail(f"expected a mapping, got {describe(value)}")
        ids = [group.id for group in space.groups]
        width_of = _per_group(at["widths"], widths, ids)
        keep_at = at["keep"]
        if not isinstance(keep, Mapping):
            keep_at.fail(f"expected a mapping of group id -> kept indices, got {describe(keep)}")
        reject_unknown(keep_at, keep, ids)
        choices = []
        for group in space.groups:
            width = expect_int(at["widths"][group.id], width_of[group.id])
            if group.id in keep:
                indices = keep[group.id]
                if isinstance(indices, str | bytes | Mapping) or not isinstance(indices, Iterable):
                    keep_at[group.id].fail(f"expected channel indices, got {describe(indices)}")
                kept = sorted(expect_int(keep_at[group.id], index) for index in indices)
            elif width == int(group.full_width):
                kept = list(range(width))
            else:
                keep_at.fail(f"no indices for group {group.id!r} (width {width} < full {group.full_width})")
            full_width = int(group.full_width)
            choices.append({"id": group.id, "full_width": full_width, "width": width, "keep": kept})
        base_macs, base_params = int(space.base_macs), int(space.base_params)
        document = {
            "schema": SCHEMA,
            "model": {field.name: getattr(identity, field.name) for field in dataclasses.fields(identity)},
            "base_macs": base_macs,
            "base_params": base_params,
            "macs": base_macs,  # placeholders: space.cost only ever sees widths checked against the space
            "params": base_params,
            "budget": {**dict.fromkeys(BUDGET_KEYS), **(budget or {})},
            "space": {**copy.deepcopy(SPACE_DEFAULTS), **(space_settings or {})},
            "provenance": {
                **dict.fromkeys(PROVENANCE_KEYS),
                "acp_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                **(provenance or {}),
            },
            **({} if latency is None else {"latency": dict(latency)}),
            "groups": choices,
        }
        architecture = _parse(document, at)
        _check_against(architecture, space, None, at, costs=False)
        macs, params = space.cost(architecture.widths)
        architecture = dataclasses.replace(architecture, macs=int(macs), params=int(params))
        return architecture.with_preprocessing(preprocessing)


# --- validation: one place, tracking the field path ------------------------------------------------


def _parse(doc: Any, at: Field) -> Architecture:
    """Everything that can be checked without the model; the one place the document's rules live."""
    if not isinstance(doc, Mapping):
        at.fail(f"expected a JSON object (an acp architecture), got {describe(doc)}")
    if "schema" not in doc:
        at.fail(f"missing schema tag 'schema' (expected {SCHEMA!r}); is this an acp architecture file?")
    tag = doc["schema"]
    if not (isinstance(tag, str) and tag == SCHEMA):
        at["schema"].fail(f"unsupported schema {show(tag)}; this acp reads {SCHEMA!r}")
    expect_object(at, doc, _TOP_KEYS, ("provenance", "latency", "preprocessing"))
    base_macs = expect_int(at["base_macs"], doc["base_macs"], 1)
    base_params = expect_int(at["base_params"], doc["base_params"], 1)
    identity = _parse_identity(at["model"], doc["model"])
    preprocessing = None  # optional: files written before it was recorded load without it
    if doc.get("preprocessing") is not None:
        preprocessing = parse_preprocessing(at["preprocessing"], doc["preprocessing"])
        check_against_model(at["preprocessing"], preprocessing, identity.input_size, identity.num_classes)
    groups = _parse_groups(at["groups"], doc["groups"])
    latency = None if doc.get("latency") is None else _parse_latency(at["latency"], doc["latency"])
    if latency is not None and len(latency.get("searched_widths", groups)) != len(groups):
        at["latency"]["searched_widths"].fail(f"expected {len(groups)} widths, one per group")
    return Architecture(
        model=identity,
        groups=groups,
        base_macs=base_macs,
        base_params=base_params,
        macs=expect_int(at["macs"], doc["macs"], 0, base_macs),
        params=expect_int(at["params"], doc["params"], 0, base_params),
        budget=_parse_budget(at["budget"], doc["budget"]),
        space=_parse_space(at["space"], doc["space"]),
        provenance=_parse_provenance(at["provenance"], doc.get("provenance", {})),
        latency=latency,
        preprocessing=preprocessing,
    )


def _parse_identity(at: Field, value: Any) -> ModelIdentity:
    value = expect_object(at, value, ("name", "num_classes", "input_size"), ("kwargs",))
    size = expect_array(at["input_size"], value["input_size"], "3 integers [channels, height, width]")
    if len(size) != 3:
        at["input_size"].fail(f"expected [channels, height, width], got {show(size)}")
    kwargs = json_data(at["kwargs"], value.get("kwargs", {}))
    if not isinstance(kwargs, dict):
        at["kwargs"].fail(f"expected an object, got {describe(kwargs)}")
    if "num_classes" in kwargs:
        at["kwargs"].fail("'num_classes' belongs in model.num_classes")
    return ModelIdentity(
        name=expect_str(at["name"], value["name"]),
        num_classes=optional(expect_int, at["num_classes"], value["num_classes"], 1),
        input_size=tuple(expect_int(at["input_size"][i], dim, 1) for i, dim in enumerate(size)),
        kwargs=kwargs,
    )


def _parse_groups(at: Field, value: Any) -> tuple[GroupChoice, ...]:
    first_seen: dict[str, int] = {}
    choices = []
    for i, item in enumerate(expect_array(at, value, "groups")):
        group_at = at[i]
        item = expect_object(group_at, item, ("id", "full_width", "width", "keep"))
        group_id = expect_str(group_at["id"], item["id"])
        if group_id in first_seen:
            group_at["id"].fail(f"duplicate group {group_id!r} (also groups[{first_seen[group_id]}])")
        first_seen[group_id] = i
        full_width = expect_int(group_at["full_width"], item["full_width"], 1)
        width = expect_int(group_at["width"], item["width"], 1, full_width)
        keep = _parse_keep(group_at["keep"], item["keep"], full_width, width)
        choices.append(GroupChoice(group_id, full_width, width, keep))
    return tuple(choices)


def _parse_keep(at: Field, value: Any, full_width: int, width: int) -> tuple[int, ...]:
    indices = [expect_int(at[i], index) for i, index in enumerate(expect_array(at, value, "channel indices"))]
    previous = -1
    for index in indices:
        if not 0 <= index < full_width:
            at.fail(f"index {show(index)} out of range for full_width {full_width}")
        if index == previous:
            at.fail(f"duplicate index {index}")
        if index < previous:
            at.fail(f"indices must be sorted ascending ({index} follows {previous})")
        previous = index
    if len(indices) != width:
        at.fail(f"has {len(indices)} indices but width is {width}")
    return tuple(indices)


def _parse_budget(at: Field, value: Any) -> dict:
    value = expect_object(at, value, BUDGET_KEYS, LATENCY_BUDGET_KEYS)
    budget = {
        key: optional(expect_number, at[key], value[key], 0.0, 1.0, open_low=True) for key in BUDGET_KEYS
    }
    if any(key in value for key in LATENCY_BUDGET_KEYS):
        budget["latency"] = optional(
            expect_number, at["latency"], value.get("latency"), 0.0, 1.0, open_low=True
        )
        budget["latency_ms"] = optional(
            expect_number, at["latency_ms"], value.get("latency_ms"), 0.0, open_low=True
        )
    return budget


def _parse_latency(at: Field, value: Any) -> dict:
    value = expect_object(at, value, LATENCY_KEYS, MEASURED_LATENCY_KEYS)
    record = {
        "runtime": expect_str(at["runtime"], value["runtime"]),
        "batch_size": expect_int(at["batch_size"], value["batch_size"], 1),
        "threads": expect_int(at["threads"], value["threads"], 1),
        "cpu": expect_str(at["cpu"], value["cpu"]),
        "base_ms": expect_number(at["base_ms"], value["base_ms"], 0.0, open_low=True),
        "predicted_ms": expect_number(at["predicted_ms"], value["predicted_ms"], 0.0, open_low=True),
    }
    measured = [key for key in MEASURED_LATENCY_KEYS if key in value]
    if not measured:
        return record
    if len(measured) != len(MEASURED_LATENCY_KEYS):
        missing = next(key for key in MEASURED_LATENCY_KEYS if key not in value)
        at.fail(f"missing key {missing!r} (the measured winner's keys come together)")
    for key in ("measured_ms", "base_measured_ms", "measured_ratio"):
        record[key] = expect_number(at[key], value[key], 0.0, open_low=True)
    if not isinstance(value["measured_budget_met"], bool):
        met = value["measured_budget_met"]
        at["measured_budget_met"].fail(f"expected true or false, got {describe(met)}")
    record["measured_budget_met"] = value["measured_budget_met"]
    record["tolerance"] = expect_number(at["tolerance"], value["tolerance"], 0.0, 1.0)
    widths = expect_array(at["searched_widths"], value["searched_widths"], "widths")
    record["searched_widths"] = [expect_int(at["searched_widths"][i], w, 1) for i, w in enumerate(widths)]
    record["measurements"] = expect_int(at["measurements"], value["measurements"], 1)
    return record


def _parse_space(at: Field, value: Any) -> dict:
    value = expect_object(at, value, tuple(SPACE_DEFAULTS))
    layers = expect_array(at["ignored_layers"], value["ignored_layers"], "layer names")
    return {
        "round_to": expect_int(at["round_to"], value["round_to"], 1),
        "min_keep": expect_number(at["min_keep"], value["min_keep"], 0.0, 1.0, open_low=True),
        "ignored_layers": [expect_str(at["ignored_layers"][i], name) for i, name in enumerate(layers)],
    }


def _parse_provenance(at: Field, value: Any) -> dict:
    value = expect_object(at, value, (), PROVENANCE_KEYS)
    result = {key: value.get(key) for key in PROVENANCE_KEYS}
    if result["source"] is not None and result["source"] not in SOURCES:
        at["source"].fail(f"expected one of {', '.join(SOURCES)} or null, got {describe(result['source'])}")
    result["seed"] = optional(expect_int, at["seed"], result["seed"], 0)
    result["evaluations"] = optional(expect_int, at["evaluations"], result["evaluations"], 0)
    result["proxy_score"] = optional(expect_number, at["proxy_score"], result["proxy_score"])
    result["finalist_score"] = optional(expect_number, at["finalist_score"], result["finalist_score"])
    result["finalists"] = optional(expect_int, at["finalists"], result["finalists"], 0)
    result["proxy_rank"] = optional(expect_int, at["proxy_rank"], result["proxy_rank"], 1)
    for key in ("criterion", "acp_version", "created"):
        optional(expect_str, at[key], result[key])
    if result["created"] is not None:
        try:  # Python 3.10's fromisoformat does not know the "Z" suffix
            datetime.fromisoformat(result["created"].replace("Z", "+00:00"))
        except ValueError:
            at["created"].fail(f"expected an ISO 8601 time, got {show(result['created'])}")
    return result


# --- checks that need the model's ChannelSpace ----------------------------------------------------


def _wrong_model(architecture: Architecture, model_name: str, at: Field) -> NoReturn:
    at["model"]["name"].fail(f"architecture is for model {architecture.model.name!r}, not {model_name!r}")


def _check_against(architecture: Architecture, space, model_name: str | None, at: Field, costs=True) -> None:
    if model_name is not None and architecture.model.name != model_name:
        _wrong_model(architecture, model_name, at)
    expected_size = tuple(int(dim) for dim in space.input_shape[1:])
    if architecture.model.input_size != expected_size:
        at["model"]["input_size"].fail(
            f"architecture is for input size {list(architecture.model.input_size)}, "
            f"but the model's channel space was built for {list(expected_size)}"
        )
    space_ids = [group.id for group in space.groups]
    known, present = set(space_ids), set()
    for i, choice in enumerate(architecture.groups):
        if choice.id not in known:
            close = difflib.get_close_matches(choice.id, space_ids, n=3)
            hint = f" (close matches: {', '.join(close)})" if close else ""
            at["groups"][i]["id"].fail(
                f"unknown group {choice.id!r}: the model's channel space has none{hint}"
            )
        present.add(choice.id)
    missing = [group_id for group_id in space_ids if group_id not in present]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        at["groups"].fail(f"missing group(s) {', '.join(map(repr, missing[:3]))}{more} of the model")
    for i, (choice, group) in enumerate(zip(architecture.groups, space.groups)):
        group_at = at["groups"][i]
        if choice.id != group.id:
            group_at["id"].fail(f"expected group {group.id!r} here (groups follow the model's order)")
        full_width = int(group.full_width)
        if choice.full_width != full_width:
            group_at["full_width"].fail(f"{choice.full_width} disagrees with the model's {full_width}")
        if not int(group.min_width) <= choice.width <= int(group.max_width):
            group_at["width"].fail(f"{choice.width} out of range [{group.min_width}, {group.max_width}]")
        if choice.width not in {int(width) for width in group.allowed_widths()}:
            group_at["width"].fail(
                f"{choice.width} is not an allowed width (multiples of round_to {group.round_to} "
                f"in [{group.min_width}, {group.max_width}], or {group.full_width})"
            )
    for key, expected in (("base_macs", space.base_macs), ("base_params", space.base_params)):
        if getattr(architecture, key) != int(expected):
            at[key].fail(f"recorded {getattr(architecture, key)} but the model has {int(expected)}")
    if not costs:
        return
    macs, params = space.cost(architecture.widths)
    for key, expected in (("macs", macs), ("params", params)):
        if getattr(architecture, key) != int(expected):
            at[key].fail(f"recorded {getattr(architecture, key)} but the widths cost {int(expected)}")


# --- reading files: data only ---------------------------------------------------------------------


class _BadJSON(ValueError):
    """Raised from json hooks; turned into a UserError naming the file."""


def _refuse_constant(name: str) -> NoReturn:
    raise _BadJSON(f"invalid JSON: {name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:  # json keeps the last silently; in a contract file a repeated key is a mistake
            raise _BadJSON(f"invalid JSON: duplicate key {show(key)} in an object")
        seen.add(key)
    return dict(pairs)


def _read_json(path: Path, at: Field) -> Any:
    try:
        info = path.stat()
    except FileNotFoundError:
        at.fail("architecture file not found")
    except (OSError, ValueError) as error:  # ValueError: e.g. a NUL byte in the path
        at.fail(f"cannot read architecture file: {error}")
    if stat.S_ISDIR(info.st_mode):
        at.fail("is a directory, not an architecture file")
    if not stat.S_ISREG(info.st_mode):
        at.fail("is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        at.fail(f"file is {info.st_size} bytes; an architecture file may be at most {MAX_FILE_BYTES} bytes")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        at.fail(f"cannot read architecture file: {error}")
    if len(data) > MAX_FILE_BYTES:
        at.fail(f"file is larger than {MAX_FILE_BYTES} bytes, the most an architecture file may be")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        at.fail(f"not UTF-8 text (invalid byte at offset {error.start}); expected a JSON architecture file")
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        at.fail(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}")
    except _BadJSON as error:
        at.fail(str(error))
    except RecursionError:
        at.fail("invalid JSON: nested too deeply")
    except ValueError as error:  # e.g. an integer literal beyond Python's digit limit
        at.fail(f"invalid JSON: {error}")


def _per_group(at: Field, widths: Any, ids: list[str]) -> dict[str, Any]:
    """Widths given as a mapping id -> width or as a sequence in space order, as a mapping."""
    if isinstance(widths, Mapping):
        reject_unknown(at, widths, ids)
        missing = [group_id for group_id in ids if group_id not in widths]
        if missing:
            at.fail(f"missing width for group {missing[0]!r}")
        return dict(widths)
    try:
        values = list(widths)
    except TypeError:
        at.fail(f"expected a mapping or a sequence of widths, got {describe(widths)}")
    if len(values) != len(ids):
        at.fail(f"expected {len(ids)} widths (one per group, in space order), got {len(values)}")
    return dict(zip(ids, values))
