"""Hypothesis: no TOML document, however odd, makes the config loader fail with anything but UserError.

A config file is data only: ``acp.config.load_config`` / ``validate`` either return a resolved config or
raise :class:`acp.errors.UserError` naming the file and field -- never a TypeError, OverflowError or
KeyError from deep inside. Documents come three ways: generated tables written with ``dump_toml``
(near the schema, so values reach the field checks), raw text (syntax errors), and mutations of a valid
file. A resolved config also survives ``dump_toml`` -> ``load_config`` unchanged (``acp search`` relies on
that to resume from ``config.toml``).
"""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acp.config import SCHEMA, dump_toml, load_config, validate
from acp.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID = """
[model]
name = "resnet8_cifar"
num_classes = 10
input_size = [3, 16, 16]

[data]
spec = "digits:16"

[budget]
flops = 0.5

[search]
particles = 2
iterations = 1
"""

names = st.one_of(
    st.sampled_from([*SCHEMA, *(key for fields in SCHEMA.values() for key in fields)]),
    st.text(min_size=0, max_size=12),
)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # TOML integers are unbounded in tomllib
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=10,
)
documents = st.dictionaries(names, st.one_of(st.dictionaries(names, values, max_size=6), values), max_size=5)


def schema_documents(allow_nan: bool = True):
    """Tables with the schema's own sections and keys, so generated values reach the field checks."""
    floats = st.floats(allow_nan=allow_nan, allow_infinity=allow_nan)
    plain = st.one_of(st.booleans(), st.integers(-5, 300), floats, st.text(max_size=8))
    value = st.one_of(
        plain, st.lists(st.integers(-2, 40), max_size=4), st.dictionaries(st.text(max_size=4), plain)
    )
    sections = {
        section: st.dictionaries(st.sampled_from(sorted(fields)), value, max_size=len(fields))
        for section, fields in SCHEMA.items()
        if section != "model"
    }
    model = st.fixed_dictionaries(
        {"name": st.sampled_from(["resnet8_cifar", "x"])},
        optional={
            "num_classes": st.integers(-1, 20),
            "input_size": st.lists(st.integers(-1, 40), max_size=4),
        },
    )
    return st.fixed_dictionaries({"model": model}, optional=sections)


def _load(path, text: str):
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_config(path)
    except UserError as error:
        assert str(path) in str(error), str(error)  # the message names the file
        return None


@FUZZ
@given(document=documents)
def test_validate_only_raises_user_error(document):
    try:
        validate(document, source="fuzz.toml")
    except UserError as error:
        assert str(error).startswith("fuzz.toml: "), str(error)


@FUZZ
@given(document=st.one_of(documents, schema_documents()))
def test_any_dumped_document_loads_or_is_a_user_error(tmp_path, document):
    _load(tmp_path / "fuzz.toml", dump_toml(document))


@FUZZ
@given(text=st.text(alphabet=string.printable + "[]=\"'.#é\x00\x7f", max_size=200))
def test_raw_text_loads_or_is_a_user_error(tmp_path, text):
    _load(tmp_path / "raw.toml", text)


@FUZZ
@given(position=st.integers(0, len(VALID)), insert=st.text(max_size=6), cut=st.integers(0, 5))
def test_mutated_valid_file_loads_or_is_a_user_error(tmp_path, position, insert, cut):
    _load(tmp_path / "mutated.toml", VALID[:position] + insert + VALID[position + cut :])


@FUZZ
@given(data=st.binary(max_size=64))
def test_binary_file_is_a_user_error(tmp_path, data):
    path = tmp_path / "binary.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except UserError as error:
        assert str(path) in str(error), str(error)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@FUZZ
@given(document=schema_documents())
def test_a_resolved_config_round_trips_through_dump_toml(tmp_path, document):
    try:
        # resolved as load_config resolves a file in tmp_path: relative paths against the file's directory
        resolved = validate(document, source="fuzz.toml", base_dir=tmp_path.resolve())
    except UserError:
        return
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(resolved), encoding="utf-8")
    loaded = load_config(path)
    loaded.pop("_source")
    assert _same(loaded, resolved)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[budget]\nflops = 1" + "0" * 400 + "\n", "[budget].flops must be a number"),
        ('[model]\nname = "x"\ninput_size = [true, 16, 16]\n', "[model].input_size = [True, 16, 16]"),
        ('[model]\nname = "x"\nkwargs = {when = 1979-05-27}\n', None),
    ],
)
def test_cases_the_fuzzer_found(tmp_path, text, fragment):
    path = tmp_path / "found.toml"
    path.write_text(text, encoding="utf-8")
    if fragment is None:  # loads, and its dump loads back the same
        resolved = load_config(path)
        path.write_text(dump_toml(resolved), encoding="utf-8")
        assert load_config(path)["model"]["kwargs"] == resolved["model"]["kwargs"]
        return
    with pytest.raises(UserError) as error:
        load_config(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_string_with_newline_quote_and_del_round_trips(tmp_path):
    resolved = validate({"model": {"name": 'a\nb"c\\d\x7fe'}}, source="fuzz.toml")
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(resolved), encoding="utf-8")
    assert load_config(path)["model"]["name"] == 'a\nb"c\\d\x7fe'
