"""Hypothesis: no TOML document, however odd, makes the config loader fail with anything but UserError.

A config file is data only: ``acp.settings.load_settings`` / ``RunSettings.from_document`` either return
a ``RunSettings`` or raise :class:`acp.errors.UserError` naming the file and field -- never a TypeError,
OverflowError or KeyError from deep inside. Documents come three ways: generated tables written with
``dump_toml`` (the schema's own sections and keys -- read from ``acp.settings.SECTIONS`` and each field's
rule -- so values reach the field checks), raw text (syntax errors), and mutations of a valid file. Loaded
settings also survive ``RunSettings.to_toml`` -> ``load_settings`` unchanged (``acp search`` relies on
that to resume from ``config.toml``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acp.errors import UserError
from acp.settings import NONE, SECTIONS, ModelSettings, Rule, RunSettings, dump_toml, load_settings

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
random_particles = 0
"""

RULES: dict[str, dict[str, Rule]] = {
    name: {spec.name: spec.metadata["rule"] for spec in dataclasses.fields(section)}
    for name, section in SECTIONS.items()
}


def test_every_field_declares_a_rule_and_a_valid_default():
    assert set(RULES) == {
        "model",
        "task",
        "data",
        "space",
        "budget",
        "finetune",
        "search",
        "proxy",
        "rerank",
        "latency",
    }
    for name, section in SECTIONS.items():
        assert name == section.SECTION
        default = section() if name != "model" else ModelSettings(name="x")  # defaults pass their own rules
        for key, rule in RULES[name].items():
            assert rule.kinds and all(isinstance(kind, type) for kind in rule.kinds), (name, key)
            assert rule.check is None or rule.allowed, (name, key)  # a refused value is explained
            assert isinstance(getattr(default, key), rule.kinds), (name, key)


names = st.one_of(
    st.sampled_from([*RULES, *(key for fields in RULES.values() for key in fields)]),
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
# what dump_toml writes: a document of tables (a top-level scalar is in the raw-text and mutation tests)
table_documents = st.dictionaries(names, st.dictionaries(names, values, max_size=6), max_size=5)


def _near_valid(rule: Rule, allow_nan: bool):
    """Values of the rule's own kinds, near what its ``allowed`` wording accepts (and just outside it)."""
    options = []
    if bool in rule.kinds:
        options.append(st.booleans())
    if int in rule.kinds:
        low = re.search(r">= (-?\d+)", rule.allowed)
        low = int(low.group(1)) if low else 1 if "positive" in rule.allowed else -2
        options.append(st.integers(low - 1, low + 40))
    if float in rule.kinds:
        bounds = re.search(r"in [\[(](\S+), (\S+)[\])]", rule.allowed)
        low, high = (float(b) for b in bounds.groups()) if bounds else (-5.0, 5.0)
        options.append(st.floats(low, min(high, 1e6)) | st.sampled_from([low, min(high, 1e6)]))
    if str in rule.kinds:
        choices = re.findall(r"'([^']*)'", rule.allowed)  # "'star', 'ring' or 'von_neumann'"
        choices += re.findall(r"\b\d+[dhms][\w.]*", rule.allowed)  # "a duration like 8h, 90m, 1h30m"
        if rule.is_path:
            choices += [
                "digits",
                "digits:16",
                "w/base.pt",
                "../up/w.pt",
                "/abs/w.pt",
                "~/w.pt",
                "~nobody_acp/x",
            ]
        options.append(st.sampled_from(choices) if choices else st.text(min_size=1, max_size=8))
    if list in rule.kinds:
        options.append(st.lists(st.integers(-1, 40), max_size=4) | st.lists(st.text(max_size=4), max_size=3))
    if dict in rule.kinds:
        plain = st.one_of(
            st.booleans(), st.integers(-5, 300), st.floats(allow_nan=allow_nan), st.text(max_size=8)
        )
        options.append(st.dictionaries(st.text(max_size=4), plain, max_size=3))
    assert options or rule.kinds == (NONE,)
    return st.one_of(options)


def schema_documents(allow_nan: bool = True, *, strays: bool = True):
    """Tables with the schema's own sections and keys; each value of the field's kinds or (``strays``)
    of another."""
    floats = st.floats(allow_nan=allow_nan, allow_infinity=allow_nan)
    plain = st.one_of(st.booleans(), st.integers(-5, 300), floats, st.text(max_size=8))
    other = st.one_of(
        plain, st.lists(st.integers(-2, 40), max_size=4), st.dictionaries(st.text(max_size=4), plain)
    )

    def value(rule: Rule):
        near = _near_valid(rule, allow_nan)
        return st.one_of(near, near, other) if strays else near

    def table(fields: dict[str, Rule], fixed: dict | None = None):
        optional = {key: value(rule) for key, rule in fields.items() if key not in (fixed or {})}
        return st.fixed_dictionaries(fixed or {}, optional=optional)

    sections = {name: table(fields) for name, fields in RULES.items() if name != "model"}
    model = table(RULES["model"], {"name": st.sampled_from(["resnet8_cifar", "x"])})
    return st.fixed_dictionaries({"model": model}, optional=sections)


def _load(path, text: str):
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_settings(path)
    except UserError as error:
        assert str(path) in str(error), str(error)  # the message names the file
        return None


@FUZZ
@given(document=documents)
def test_from_document_only_raises_user_error(document):
    try:
        loaded = RunSettings.from_document(document, source="fuzz.toml")
    except UserError as error:
        assert str(error).startswith("fuzz.toml: "), str(error)
    else:
        assert isinstance(loaded, RunSettings) and loaded.source == "fuzz.toml"


@FUZZ
@given(document=st.one_of(table_documents, schema_documents()))
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


def test_the_valid_file_loads(tmp_path):
    loaded = _load(tmp_path / "valid.toml", VALID)
    assert loaded is not None and loaded.search.particles == 2 and loaded.budget.flops == 0.5


@FUZZ
@given(data=st.binary(max_size=64))
def test_binary_file_is_a_user_error(tmp_path, data):
    path = tmp_path / "binary.toml"
    path.write_bytes(data)
    try:
        load_settings(path)
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
@given(document=st.one_of(schema_documents(), schema_documents(strays=False)))
def test_loaded_settings_round_trip_through_to_toml(tmp_path, document):
    try:
        # resolved as load_settings resolves a file in tmp_path: relative paths against the file's directory
        resolved = RunSettings.from_document(document, source="fuzz.toml", base_dir=tmp_path.resolve())
    except UserError:
        return
    path = tmp_path / "config.toml"
    path.write_text(resolved.to_toml(), encoding="utf-8")
    loaded = load_settings(path)
    assert loaded.source == str(path)
    assert _same(loaded.to_document(), resolved.to_document())
    assert _same(loaded.fingerprint(), resolved.fingerprint())  # what a resume compares


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[budget]\nflops = 1" + "0" * 400 + "\n", "[budget].flops must be a number"),
        ('[model]\nname = "x"\ninput_size = [true, 16, 16]\n', "[model].input_size = [True, 16, 16]"),
        ('[model]\nname = "x"\nkwargs = {when = 1979-05-27}\n', None),
        ('[model]\nname = "x"\nweights = "~nobody_acp/w.pt"\n', None),  # pathlib: "Could not determine home"
        ('[model]\nname = "x"\n[data]\nspec = "~\\u0000"\n', None),  # pathlib: "embedded null byte"
    ],
)
def test_cases_the_fuzzer_found(tmp_path, text, fragment):
    path = tmp_path / "found.toml"
    path.write_text(text, encoding="utf-8")
    if fragment is None:  # loads, and its dump loads back the same
        resolved = load_settings(path)
        path.write_text(resolved.to_toml(), encoding="utf-8")
        assert _same(load_settings(path).to_document(), resolved.to_document())
        return
    with pytest.raises(UserError) as error:
        load_settings(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_string_with_newline_quote_and_del_round_trips(tmp_path):
    resolved = RunSettings.from_document({"model": {"name": 'a\nb"c\\d\x7fe'}}, source="fuzz.toml")
    path = tmp_path / "config.toml"
    path.write_text(resolved.to_toml(), encoding="utf-8")
    assert load_settings(path).model.name == 'a\nb"c\\d\x7fe'
