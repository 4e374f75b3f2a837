"""Architecture files are data: whatever JSON, text or bytes the loader gets, it raises only UserError."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acp.core.architecture import Architecture, ModelIdentity
from acp.errors import UserError
from acp.testing import FakeGroup, FakeSpace

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


SPACE = FakeSpace(
    (FakeGroup("stem", 8, 2, 2), FakeGroup("block.a", 12, 3, 3), FakeGroup("block.b", 6, 1, 1)),
    input_shape=(1, 3, 16, 16),
    num_classes=5,
)
IDENTITY = ModelIdentity("fuzz_net", 5, (3, 16, 16), {"width_mult": 1.0})

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def architectures(draw) -> Architecture:
    widths, keep = {}, {}
    for group in SPACE.groups:
        width = draw(st.sampled_from([int(w) for w in group.allowed_widths()]))
        widths[group.id] = width
        keep[group.id] = draw(st.permutations(range(group.full_width)))[:width]
    flops = draw(st.none() | st.floats(min_value=0.01, max_value=1.0))
    return Architecture.from_widths(
        SPACE,
        IDENTITY,
        widths,
        keep,
        budget={"flops": flops},
        provenance={"source": "search", "seed": draw(st.integers(0, 2**63)), "evaluations": 7},
    )


def _paths(node, prefix=()):
    """Every location in a JSON document (so a mutation can hit any depth)."""
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


@st.composite
def mutated_documents(draw):
    document = copy.deepcopy(draw(architectures()).to_dict())
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(document))))
        if not path:
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "nudge"]))
        if action == "delete":
            del parent[path[-1]]
        elif (
            action == "nudge" and isinstance(parent[path[-1]], int) and not isinstance(parent[path[-1]], bool)
        ):
            parent[path[-1]] += draw(st.sampled_from([-1, 1, 64]))
        else:
            parent[path[-1]] = draw(json_values)
    return document


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("arch_fuzz")


def _load_only_user_errors(path, space=SPACE):
    try:
        architecture = Architecture.load(path, space)
    except UserError as error:
        text = str(error)
        assert text.startswith(f"{path}: ") and "\n" not in text
        return None
    return architecture


@FUZZ
@given(document=json_values)
def test_arbitrary_json_values_raise_only_user_error(work_dir, document):
    with pytest.raises(UserError, match=r"^<dict>: "):
        Architecture.from_dict(document)
    path = work_dir / "any.json"
    path.write_text(json.dumps(document))
    assert _load_only_user_errors(path) is None


@FUZZ
@given(document=st.dictionaries(st.sampled_from(["schema", "model", "groups", "macs", "budget"]), json_values)
       .map(lambda d: {**d, "schema": "acp.architecture/1"}))  # fmt: skip
def test_json_objects_with_the_schema_raise_only_user_error(work_dir, document):
    path = work_dir / "schema_doc.json"
    path.write_text(json.dumps(document))
    assert _load_only_user_errors(path) is None  # none of these documents is complete


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_user_error(work_dir, data):
    path = work_dir / "bytes.json"
    path.write_bytes(data)
    _load_only_user_errors(path)


@FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_text_raises_only_user_error(work_dir, text):
    path = work_dir / "text.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load_only_user_errors(path)


@FUZZ
@given(document=mutated_documents())
def test_mutated_architectures_raise_only_user_error(work_dir, document):
    path = work_dir / "mutated.json"
    path.write_text(json.dumps(document))
    architecture = _load_only_user_errors(path)
    if architecture is not None:  # a mutation that kept it valid must survive a save/load round trip
        again = Architecture.load(architecture.save(work_dir / "resaved.json"), SPACE)
        assert again == architecture
    with contextlib.suppress(UserError):
        Architecture.from_dict(document).validate_against(SPACE)


@FUZZ
@given(architecture=architectures())
def test_valid_architectures_round_trip_exactly(work_dir, architecture):
    path = architecture.save(work_dir / "valid.json")
    loaded = Architecture.load(path, SPACE, model_name="fuzz_net")
    assert loaded == architecture
    assert (loaded.macs, loaded.params) == SPACE.cost(loaded.widths)
    assert all(list(g.keep) == sorted(set(g.keep)) and len(g.keep) == g.width for g in loaded.groups)
    assert json.loads(path.read_text()) == architecture.to_dict()
