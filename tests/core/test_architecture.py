"""The Architecture JSON contract: round trips, provenance, one exact user error per way a file is bad."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

import acp
from acp.core.architecture import SCHEMA, Architecture, GroupChoice, ModelIdentity
from acp.errors import UserError
from acp.testing import FakeGroup
from acp.testing import FakeSpace as _FakeSpace


class FakeSpace(_FakeSpace):
    """Three groups on 32x32 inputs, 10 classes."""

    def __init__(self, groups=None):
        default = (
            FakeGroup("conv1", 16, 4, 4),
            FakeGroup("layer1.conv", 32, 8, 8),
            FakeGroup("layer2.conv", 24, 3, 1),
        )
        super().__init__(groups or default)


IDENTITY = ModelIdentity("fake_net", 10, (3, 32, 32), {})
WIDTHS = {"conv1": 8, "layer1.conv": 16, "layer2.conv": 5}
KEEP = {
    "conv1": [0, 2, 4, 6, 8, 10, 12, 14],
    "layer1.conv": list(range(16, 32)),
    "layer2.conv": [0, 3, 7, 9, 23],
}


def make_arch(space=None, **overrides) -> Architecture:
    space = space or FakeSpace()
    options = {
        "budget": {"flops": 0.5},
        "space_settings": {"round_to": 4, "min_keep": 0.125, "ignored_layers": ["fc"]},
        "provenance": {"source": "manual", "seed": 3, "proxy_score": 0.25},
    }
    options.update(overrides)
    return Architecture.from_widths(space, IDENTITY, WIDTHS, KEEP, **options)


@pytest.fixture
def space():
    return FakeSpace()


@pytest.fixture
def arch(space):
    return make_arch(space)


# --- happy paths --------------------------------------------------------------------------------------


def test_from_widths_costs_and_provenance(space, arch):
    assert (arch.macs, arch.params) == space.cost(WIDTHS)
    assert (arch.base_macs, arch.base_params) == (space.base_macs, space.base_params)
    assert arch.macs == 3 * 8 * 9 * 1024 + 8 * 16 * 9 * 1024 + 16 * 5 * 9 * 1024 + 50
    assert arch.widths == WIDTHS
    assert arch.keep["layer2.conv"] == (0, 3, 7, 9, 23)
    assert arch.macs_ratio == arch.macs / space.base_macs
    assert arch.params_ratio == arch.params / space.base_params
    assert arch.summary_rows() == [("conv1", 16, 8), ("layer1.conv", 32, 16), ("layer2.conv", 24, 5)]
    assert arch.budget == {"flops": 0.5, "params": None}
    assert arch.space == {"round_to": 4, "min_keep": 0.125, "ignored_layers": ["fc"]}
    provenance = arch.provenance
    assert list(provenance) == [
        "source",
        "seed",
        "criterion",
        "evaluations",
        "proxy_score",
        "finalists",
        "proxy_rank",
        "finalist_score",
        "acp_version",
        "created",
    ]
    assert provenance["finalists"] is None and provenance["finalist_score"] is None  # not from a search
    assert (provenance["source"], provenance["seed"], provenance["criterion"]) == ("manual", 3, None)
    assert provenance["acp_version"] == acp.__version__
    created = datetime.fromisoformat(provenance["created"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)


def test_from_widths_accepts_sequences_numpy_and_unsorted_keep(space, arch):
    keep = {k: np.array(v[::-1]) for k, v in KEEP.items()}
    other = Architecture.from_widths(
        space,
        IDENTITY,
        np.array([8, 16, 5]),
        keep,
        budget={"flops": 0.5},
        space_settings={"round_to": 4, "min_keep": 0.125, "ignored_layers": ["fc"]},
        provenance={"source": "manual", "seed": 3, "proxy_score": 0.25},
    )
    assert other.content_equal(arch)
    assert all(type(i) is int for g in other.groups for i in g.keep)
    assert type(other.groups[0].width) is int


def test_from_widths_fills_full_width_groups_and_defaults(space):
    widths = {"conv1": 16, "layer1.conv": 32, "layer2.conv": 24}
    arch = Architecture.from_widths(space, IDENTITY, widths, {}, provenance={"created": None})
    assert arch.keep["layer1.conv"] == tuple(range(32))
    assert (arch.macs, arch.params, arch.macs_ratio) == (space.base_macs, space.base_params, 1.0)
    assert arch.budget == {"flops": None, "params": None}
    assert arch.space == {"round_to": 1, "min_keep": 0.1, "ignored_layers": []}
    assert arch.provenance["created"] is None


def test_save_load_round_trip_is_exact_and_stable(tmp_path, space, arch):
    path = arch.save(tmp_path / "runs" / "best_arch.json")
    assert path == tmp_path / "runs" / "best_arch.json"
    assert os.listdir(path.parent) == ["best_arch.json"]  # no temp file left behind
    text = path.read_text()
    assert text.startswith('{\n  "schema": "acp.architecture/1",\n  "model": {\n    "name": "fake_net"')
    assert text.endswith("}\n")
    document = json.loads(text)
    assert list(document) == [
        "schema",
        "model",
        "base_macs",
        "base_params",
        "macs",
        "params",
        "budget",
        "space",
        "provenance",
        "groups",
    ]
    assert document == arch.to_dict()
    assert f'"macs": {arch.macs},' in text and '"flops": 0.5,' in text and '"num_classes": 10,' in text
    loaded = Architecture.load(path, space, model_name="fake_net")
    assert loaded == arch
    assert loaded.save(tmp_path / "again.json").read_text() == text


def test_to_dict_is_a_copy(arch):
    document = arch.to_dict()
    document["space"]["ignored_layers"].append("x")
    document["model"]["kwargs"]["y"] = 1
    assert arch.space["ignored_layers"] == ["fc"] and arch.model.kwargs == {}


def test_from_dict_round_trip(arch):
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_content_equal_ignores_only_created(arch):
    later = dataclasses.replace(arch, provenance={**arch.provenance, "created": "2001-01-01T00:00:00+00:00"})
    assert later != arch
    assert later.content_equal(arch)
    reseeded = dataclasses.replace(arch, provenance={**arch.provenance, "seed": 4})
    assert not reseeded.content_equal(arch)


def test_load_without_space_checks_structure_only(tmp_path, arch):
    path = tmp_path / "a.json"
    document = arch.to_dict()
    document["macs"] -= 1  # needs the cost model to notice
    path.write_text(json.dumps(document))
    assert Architecture.load(path).macs == arch.macs - 1
    with pytest.raises(UserError) as error:
        Architecture.load(path, model_name="resnet56_cifar")
    assert (
        str(error.value) == f"{path}: model.name: architecture is for model 'fake_net', not 'resnet56_cifar'"
    )


def test_model_identity_for_model():
    assert ModelIdentity.for_model("resnet20_cifar", 10) == ModelIdentity(
        "resnet20_cifar", 10, (3, 32, 32), {}
    )
    assert ModelIdentity.for_model("resnet18").input_size == (3, 224, 224)
    with pytest.raises(UserError, match="input size unknown"):
        ModelIdentity.for_model("mypkg.models:net")


# --- bad files: one exact error each ------------------------------------------------------------------


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value(target[last]) if callable(value) else value
        return doc

    return mutate


def _rename_top(old, new):
    return lambda doc: {(new if k == old else k): v for k, v in doc.items()}


def _drop_group(index):
    return lambda doc: {**doc, "groups": [g for i, g in enumerate(doc["groups"]) if i != index]}


def _regroup(index, **fields):
    return _set(("groups", index), lambda group: {**group, **fields})


BAD_DOCUMENTS = [
    (
        "missing schema",
        lambda d: {k: v for k, v in d.items() if k != "schema"},
        "",
        "missing schema tag 'schema' (expected 'acp.architecture/1'); is this an acp architecture file?",
    ),
    (
        "wrong schema",
        _set(("schema",), "acp.architecture/2"),
        "schema: ",
        "unsupported schema 'acp.architecture/2'; this acp reads 'acp.architecture/1'",
    ),
    ("schema wrong type", _set(("schema",), 1), "schema: ", "unsupported schema 1"),
    ("unknown top key", _rename_top("budget", "budgte"), "", "unknown key 'budgte' (did you mean 'budget'?)"),
    ("missing top key", lambda d: {k: v for k, v in d.items() if k != "space"}, "", "missing key 'space'"),
    ("unknown group key", _regroup(1, widht=3), "groups[1]: ", "unknown key 'widht' (did you mean 'width'?)"),
    (
        "model not object",
        _set(("model",), "fake_net"),
        "model: ",
        "expected an object, got string 'fake_net'",
    ),
    ("width as string", _regroup(0, width="8"), "groups[0].width: ", "expected an integer, got string '8'"),
    ("bool is not int", _set(("base_macs",), True), "base_macs: ", "expected an integer, got boolean True"),
    (
        "bool num_classes",
        _set(("model", "num_classes"), False),
        "model.num_classes: ",
        "expected an integer, got boolean False",
    ),
    ("float width", _regroup(0, width=8.0), "groups[0].width: ", "expected an integer, got number 8.0"),
    ("keep not array", _regroup(0, keep="0-7"), "groups[0].keep: ", "expected an array of channel indices"),
    (
        "keep item type",
        _set(("groups", 2, "keep", 1), None),
        "groups[2].keep[1]: ",
        "expected an integer, got null",
    ),
    ("groups not array", _set(("groups",), {}), "groups: ", "expected an array of groups, got object {}"),
    ("empty id", _regroup(0, id=""), "groups[0].id: ", "expected a non-empty string, got string ''"),
    ("missing group", _drop_group(2), "groups: ", "missing group(s) 'layer2.conv' of the model"),
    (
        "duplicate group",
        lambda d: {**d, "groups": [*d["groups"], d["groups"][0]]},
        "groups[3].id: ",
        "duplicate group 'conv1' (also groups[0])",
    ),
    (
        "unknown group",
        _regroup(2, id="layer2.cnv"),
        "groups[2].id: ",
        "unknown group 'layer2.cnv': the model's channel space has none (close matches: layer2.conv",
    ),
    (
        "wrong order",
        lambda d: {**d, "groups": [d["groups"][1], d["groups"][0], d["groups"][2]]},
        "groups[0].id: ",
        "expected group 'conv1' here (groups follow the model's order)",
    ),
    (
        "width above full",
        _regroup(0, width=17, keep=list(range(17))),
        "groups[0].width: ",
        "17 out of range [1, 16]",
    ),
    ("width zero", _regroup(0, width=0, keep=[]), "groups[0].width: ", "0 out of range [1, 16]"),
    ("width below min", _regroup(0, width=2, keep=[0, 1]), "groups[0].width: ", "2 out of range [4, 16]"),
    (
        "width not allowed",
        _regroup(0, width=6, keep=list(range(6))),
        "groups[0].width: ",
        "6 is not an allowed width (multiples of round_to 4 in [4, 16], or 16)",
    ),
    (
        "keep unsorted",
        _regroup(2, keep=[0, 7, 3, 9, 23]),
        "groups[2].keep: ",
        "indices must be sorted ascending (3 follows 7)",
    ),
    ("keep duplicate", _regroup(2, keep=[0, 3, 3, 9, 23]), "groups[2].keep: ", "duplicate index 3"),
    (
        "keep out of range",
        _regroup(1, keep=[*range(17, 32), 70]),
        "groups[1].keep: ",
        "index 70 out of range for full_width 32",
    ),
    (
        "keep negative",
        _regroup(2, keep=[-1, 3, 7, 9, 23]),
        "groups[2].keep: ",
        "index -1 out of range for full_width 24",
    ),
    ("keep too short", _regroup(2, keep=[0, 3, 7, 9]), "groups[2].keep: ", "has 4 indices but width is 5"),
    (
        "full_width disagrees",
        _regroup(0, full_width=20),
        "groups[0].full_width: ",
        "20 disagrees with the model's 16",
    ),
    (
        "tampered macs",
        _set(("macs",), lambda v: v - 1),
        "macs: ",
        "recorded {macs_minus_1} but the widths cost {macs}",
    ),
    (
        "tampered params",
        _set(("params",), lambda v: v + 1),
        "params: ",
        "recorded {params_plus_1} but the widths cost {params}",
    ),
    (
        "tampered base",
        _set(("base_params",), lambda v: v + 1),
        "base_params: ",
        "recorded {base_params_plus_1} but the model has {base_params}",
    ),
    ("macs above base", _set(("macs",), lambda v: 10**12), "macs: ", "1000000000000 out of range [0, "),
    (
        "input_size mismatch",
        _set(("model", "input_size"), [3, 64, 64]),
        "model.input_size: ",
        "architecture is for input size [3, 64, 64], but the model's channel space was built for [3, 32, 32]",
    ),
    (
        "input_size length",
        _set(("model", "input_size"), [32, 32]),
        "model.input_size: ",
        "expected [channels, height, width], got [32, 32]",
    ),
    ("negative budget", _set(("budget", "flops"), -0.5), "budget.flops: ", "-0.5 out of range (0.0, 1.0]"),
    ("zero budget", _set(("budget", "params"), 0), "budget.params: ", "0 out of range (0.0, 1.0]"),
    ("budget above one", _set(("budget", "flops"), 1.5), "budget.flops: ", "1.5 out of range (0.0, 1.0]"),
    (
        "budget string",
        _set(("budget", "flops"), "50%"),
        "budget.flops: ",
        "expected a number, got string '50%'",
    ),
    ("space round_to", _set(("space", "round_to"), 0), "space.round_to: ", "0 out of range [1, ...]"),
    (
        "ignored layer type",
        _set(("space", "ignored_layers"), ["fc", 3]),
        "space.ignored_layers[1]: ",
        "expected a non-empty string, got integer 3",
    ),
    (
        "provenance source",
        _set(("provenance", "source"), "magic"),
        "provenance.source: ",
        "expected one of search, cluster, uniform, manual or null, got string 'magic'",
    ),
    (
        "provenance created",
        _set(("provenance", "created"), "yesterday"),
        "provenance.created: ",
        "expected an ISO 8601 time, got 'yesterday'",
    ),
    (
        "provenance unknown",
        _set(("provenance", "seeed"), 1),
        "provenance: ",
        "unknown key 'seeed' (did you mean 'seed'?)",
    ),
    (
        "kwargs num_classes",
        _set(("model", "kwargs"), {"num_classes": 10}),
        "model.kwargs: ",
        "'num_classes' belongs in model.num_classes",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [case[1:] for case in BAD_DOCUMENTS],
    ids=[case[0] for case in BAD_DOCUMENTS],
)
def test_bad_document_names_the_field(tmp_path, space, arch, mutate, field, message):
    path = tmp_path / "best_arch.json"
    path.write_text(json.dumps(mutate(copy.deepcopy(arch.to_dict())), indent=2))
    numbers = {
        "macs": arch.macs,
        "macs_minus_1": arch.macs - 1,
        "params": arch.params,
        "params_plus_1": arch.params + 1,
        "base_params": arch.base_params,
        "base_params_plus_1": arch.base_params + 1,
    }
    for name, value in numbers.items():
        message = message.replace("{" + name + "}", str(value))
    with pytest.raises(UserError) as error:
        Architecture.load(path, space)
    text = str(error.value)
    assert text.startswith(f"{path}: {field}{message}"), text
    assert "\n" not in text


def test_from_dict_names_dict_source_and_rejects_nan(arch):
    document = arch.to_dict()
    document["budget"]["flops"] = math.nan
    with pytest.raises(UserError) as error:
        Architecture.from_dict(document)
    assert str(error.value) == "<dict>: budget.flops: must be a finite number, got nan"
    with pytest.raises(
        UserError, match=r"^<dict>: expected a JSON object \(an acp architecture\), got array \[1\]$"
    ):
        Architecture.from_dict([1])


def test_model_name_mismatch_with_space(tmp_path, space, arch):
    path = arch.save(tmp_path / "a.json")
    with pytest.raises(UserError) as error:
        Architecture.load(path, space, model_name="resnet56_cifar")
    assert (
        str(error.value) == f"{path}: model.name: architecture is for model 'fake_net', not 'resnet56_cifar'"
    )


BAD_FILES = [
    (
        "invalid json",
        '{\n  "schema": "acp.architecture/1",\n  oops\n}',
        "invalid JSON at line 3 column 3: Expecting property name enclosed in double quotes",
    ),
    (
        "truncated",
        '{"schema": "acp.architecture/1", "model": [',
        "invalid JSON at line 1 column 44: Expecting value",
    ),
    ("empty file", "", "invalid JSON at line 1 column 1: Expecting value"),
    ("not an object", "[1, 2]", "expected a JSON object (an acp architecture), got array [1, 2]"),
    ("a string", '"acp.architecture/1"', "expected a JSON object (an acp architecture), got string"),
    (
        "NaN constant",
        '{"schema": "acp.architecture/1", "budget": {"flops": NaN}}',
        "invalid JSON: NaN is not a JSON number",
    ),
    ("Infinity", "[Infinity]", "invalid JSON: Infinity is not a JSON number"),
    (
        "duplicate key",
        '{"schema": "acp.architecture/1", "schema": "x"}',
        "invalid JSON: duplicate key 'schema' in an object",
    ),
    ("huge integer", "[" + "9" * 5000 + "]", "invalid JSON: "),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_contents(tmp_path, space, text, message):
    path = tmp_path / "arch.json"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        Architecture.load(path, space)
    assert str(error.value).startswith(f"{path}: {message}"), str(error.value)


def test_overflowing_float_literal(tmp_path, arch):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch.to_dict()).replace('"flops": 0.5', '"flops": 1e400'))
    with pytest.raises(UserError) as error:
        Architecture.load(path)
    assert str(error.value) == f"{path}: budget.flops: must be a finite number, got inf"


def test_bad_paths(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(UserError) as error:
        Architecture.load(missing)
    assert str(error.value) == f"{missing}: architecture file not found"
    with pytest.raises(UserError) as error:
        Architecture.load(tmp_path)
    assert str(error.value) == f"{tmp_path}: is a directory, not an architecture file"


def test_file_too_large(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("wb") as stream:
        stream.truncate(64 * 2**20 + 1)  # sparse: costs no disk
    with pytest.raises(UserError) as error:
        Architecture.load(path)
    assert (
        str(error.value)
        == f"{path}: file is {64 * 2**20 + 1} bytes; an architecture file may be at most 67108864 bytes"
    )


def test_binary_and_pickle_files_are_data_not_code(tmp_path):
    import pickle

    path = tmp_path / "arch.json"
    path.write_bytes(pickle.dumps({"schema": SCHEMA}))
    with pytest.raises(UserError, match=r"not UTF-8 text \(invalid byte at offset 0\)"):
        Architecture.load(path)
    path.write_bytes(
        b'\xef\xbb\xbf{"schema": "acp.architecture/1"}'
    )  # a BOM is tolerated, the rest is checked
    with pytest.raises(UserError, match=r": unknown key|: missing key 'model'"):
        Architecture.load(path)


# --- in-memory architectures --------------------------------------------------------------------------


def test_save_refuses_invalid_architecture_and_writes_nothing(tmp_path, arch):
    path = tmp_path / "a.json"
    broken = dataclasses.replace(arch, budget={"flops": math.inf, "params": None})
    with pytest.raises(UserError) as error:
        broken.save(path)
    assert str(error.value) == f"{path}: budget.flops: must be a finite number, got inf"
    assert list(tmp_path.iterdir()) == []
    odd = dataclasses.replace(arch, model=dataclasses.replace(arch.model, kwargs={"f": object()}))
    with pytest.raises(UserError, match=r"model\.kwargs\.f: expected plain JSON data, got object <object"):
        odd.save(path)


def test_validate_against_checks_hand_built_objects(space, arch):
    arch.validate_against(space, "fake_net")
    bad_keep = dataclasses.replace(arch, groups=(GroupChoice("conv1", 16, 8, (0, 1, 2)), *arch.groups[1:]))
    with pytest.raises(UserError) as error:
        bad_keep.validate_against(space)
    assert str(error.value) == "<architecture>: groups[0].keep: has 3 indices but width is 8"
    with pytest.raises(
        UserError, match=r"^<architecture>: model\.name: architecture is for model 'fake_net', not 'x'$"
    ):
        arch.validate_against(space, "x")
    other_space = FakeSpace([FakeGroup("conv1", 16, 4, 4), FakeGroup("layer1.conv", 32, 8, 8)])
    with pytest.raises(UserError, match=r"^<architecture>: groups\[2\]\.id: unknown group 'layer2.conv'"):
        arch.validate_against(other_space)


@pytest.mark.parametrize(
    ("widths", "keep", "message"),
    [
        (
            {"conv1": 8, "layer1.conv": 16},
            KEEP,
            "<from_widths>: widths: missing width for group 'layer2.conv'",
        ),
        ({**WIDTHS, "fc": 3}, KEEP, "<from_widths>: widths: unknown key 'fc'"),
        ([8, 16], KEEP, "<from_widths>: widths: expected 3 widths (one per group, in space order), got 2"),
        (WIDTHS, {**KEEP, "conv2": [1]}, "<from_widths>: keep: unknown key 'conv2' (did you mean 'conv1'?)"),
        (
            WIDTHS,
            {"conv1": KEEP["conv1"]},
            "<from_widths>: keep: no indices for group 'layer1.conv' (width 16 < full 32)",
        ),
        ({**WIDTHS, "conv1": "8"}, KEEP, "<from_widths>: widths.conv1: expected an integer, got string '8'"),
        ({**WIDTHS, "conv1": 12}, KEEP, "<from_widths>: groups[0].keep: has 8 indices but width is 12"),
        (WIDTHS, {**KEEP, "conv1": 5}, "<from_widths>: keep.conv1: expected channel indices, got integer 5"),
    ],
)
def test_from_widths_errors(space, widths, keep, message):
    with pytest.raises(UserError) as error:
        Architecture.from_widths(space, IDENTITY, widths, keep)
    assert str(error.value).startswith(message), str(error.value)


class StrictCostSpace(FakeSpace):
    def cost(self, widths):
        assert all(1 <= widths[g.id] <= g.full_width for g in self.groups), (
            "cost called with unchecked widths"
        )
        return super().cost(widths)


def test_from_widths_checks_widths_before_calling_the_cost_model():
    with pytest.raises(UserError) as error:
        Architecture.from_widths(
            StrictCostSpace(), IDENTITY, {**WIDTHS, "conv1": 40}, {**KEEP, "conv1": range(40)}
        )
    assert str(error.value) == "<from_widths>: groups[0].width: 40 out of range [1, 16]"
    with pytest.raises(UserError, match=r"^<from_widths>: identity: expected a ModelIdentity, got dict$"):
        Architecture.from_widths(FakeSpace(), {"name": "fake_net"}, WIDTHS, KEEP)


def test_from_widths_rejects_width_the_space_forbids(space):
    with pytest.raises(UserError) as error:
        Architecture.from_widths(
            space, IDENTITY, {**WIDTHS, "layer1.conv": 12}, {**KEEP, "layer1.conv": range(12)}
        )
    assert str(error.value) == (
        "<from_widths>: groups[1].width: 12 is not an allowed width "
        "(multiples of round_to 8 in [8, 32], or 32)"
    )


# --- the real ChannelSpace ----------------------------------------------------------------------------


def test_integration_with_real_channel_space(tmp_path):
    try:
        from acp.core.space import ChannelSpace
    except Exception as error:  # noqa: BLE001  (any import failure means the sibling module is not ready)
        pytest.skip(f"acp.core.space is not importable yet ({type(error).__name__}: {error})")
    import torch

    space = ChannelSpace.build(acp.create_model("resnet20_cifar"), torch.zeros(1, 3, 32, 32))
    widths = {}
    keep = {}
    for group in space.groups:
        allowed = group.allowed_widths()
        widths[group.id] = int(allowed[len(allowed) // 2])
        keep[group.id] = range(group.full_width - widths[group.id], group.full_width)
    identity = ModelIdentity.for_model("resnet20_cifar", 10)
    arch = Architecture.from_widths(
        space, identity, widths, keep, budget={"flops": 0.6}, provenance={"source": "uniform"}
    )
    assert (arch.macs, arch.params) == tuple(int(v) for v in space.cost(widths))
    assert arch.base_macs == space.base_macs and 0 < arch.macs < arch.base_macs
    path = arch.save(tmp_path / "best_arch.json")
    assert Architecture.load(path, space, model_name="resnet20_cifar") == arch
    document = arch.to_dict()
    document["params"] -= 1
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=rf"^{path}: params: recorded {arch.params - 1} but the widths cost"):
        Architecture.load(path, space)
    with pytest.raises(UserError, match="architecture is for model 'resnet20_cifar', not 'resnet56_cifar'"):
        Architecture.load(arch.save(path), space, model_name="resnet56_cifar")
    smaller = ChannelSpace.build(acp.create_model("resnet8_cifar"), torch.zeros(1, 3, 32, 32))
    with pytest.raises(
        UserError, match=rf"^{path}: groups\[2\]\.id: unknown group 'layer1.1.conv1': the model's"
    ):
        Architecture.load(path, smaller)
