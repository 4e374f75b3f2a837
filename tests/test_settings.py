from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from acp.errors import UserError
from acp.settings import (
    BudgetSettings,
    RunSettings,
    SearchSettings,
    SpaceSettings,
    dump_toml,
    load_settings,
)
from acp.workflows.problem import load_problem, model_identity, resolve_settings

SEARCH_SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_defaults_are_filled_and_relative_paths_resolved(tmp_path):
    settings = load_settings(write(tmp_path, '[model]\nname = "resnet8_cifar"\nweights = "w/base.pt"\n'))
    assert settings.model.weights == str(tmp_path / "w" / "base.pt")
    assert settings.space == SpaceSettings()
    assert settings.space.to_dict() == {"ignored_layers": [], "round_to": 1, "min_keep": 0.1}
    assert settings.budget == BudgetSettings() and not settings.budget.given
    assert settings.budget.to_dict() == {"flops": None, "params": None, "latency": None, "latency_ms": None}
    assert settings.data.split == "auto"
    assert settings.source == str(tmp_path / "space.toml")


def test_integer_budgets_are_numbers_and_digits_spec_is_not_a_path(tmp_path):
    settings = load_settings(
        write(tmp_path, '[model]\nname = "x"\n[budget]\nflops = 1\n[data]\nspec = "digits:16"\n')
    )
    assert settings.budget.flops == 1.0 and isinstance(settings.budget.flops, float)
    assert settings.data.spec == "digits:16"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[model]\nname = "a"\n[modle]\n', ["unknown section [modle]", "did you mean 'model'"]),
        ('[model]\nname = "a"\nwieghts = "x"\n', ["unknown key [model].wieghts", "did you mean 'weights'"]),
        ('[model]\nname = "a"\n[space]\nround_to = "8"\n', ["[space].round_to must be an integer, got '8'"]),
        (
            '[model]\nname = "a"\n[space]\nround_to = 0\n',
            ["[space].round_to = 0 is not allowed (expected a positive integer)"],
        ),
        ('[model]\nname = "a"\n[space]\nround_to = true\n', ["[space].round_to must be an integer"]),
        (
            '[model]\nname = "a"\n[budget]\nflops = 1.5\n',
            ["[budget].flops = 1.5 is not allowed (expected a number in (0, 1], or a list of them)"],
        ),
        ('[model]\nname = "a"\n[budget]\nflops = -0.5\n', ["[budget].flops = -0.5 is not allowed"]),
        ('[model]\nname = "a"\n[budget]\nflops = nan\n', ["[budget].flops = nan is not allowed"]),
        ('[model]\nname = "a"\ninput_size = [3, 32]\n', ["[model].input_size", "[channels, height, width]"]),
        ("[model]\nnum_classes = 10\n", ["[model].name is required"]),
        ("[model]\nname = \n", ["TOML syntax error", "line 2"]),
        ("model = 3\n", ["[model] must be a table"]),
        ('[model]\nname = "a"\n[data]\nspec = ""\n', ["[data].spec = '' is not allowed"]),
        ('[model]\nname = "a"\nweights = " "\n', ["[model].weights = ' ' is not allowed"]),
        (
            '[model]\nname = "a"\n[search]\nparticles = 1\n',
            ["[search].particles = 1 is not allowed (expected an integer >= 2)"],
        ),
        (
            '[model]\nname = "a"\n[search]\nparticles = 4\nrandom_particles = 3\n',
            ["[search].random_particles: 3 random particles", "at most 2"],
        ),
        (
            '[model]\nname = "a"\n[search]\nbackend = "ray"\ndask_scheduler = "tcp://h:1"\n',
            ["[search].backend: 'ray' and a dask_scheduler address were both given"],
        ),
        ('[model]\nname = "a"\n[search]\ntime_limit = "soon"\n', ["[search].time_limit = 'soon'"]),
        ('[model]\nname = "a"\n[proxy]\nthreads = 0\n', ["[proxy].threads = 0 is not allowed"]),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_settings_made_in_python_are_checked_by_the_same_rules():
    with pytest.raises(UserError) as caught:
        SearchSettings(particles=1)
    assert str(caught.value) == "[search].particles = 1 is not allowed (expected an integer >= 2)"
    with pytest.raises(UserError, match=r"^\[search\]\.random_particles: "):
        SearchSettings(particles=3, random_particles=2)
    assert SearchSettings(particles=4, random_particles=2).random_particles == 2
    table = SearchSettings.from_table({"particles": 5, "velocity_clamp": 1})
    assert table.particles == 5 and table.velocity_clamp == 1.0 and isinstance(table.velocity_clamp, float)
    assert table.replace(particles=None, seed=3) == SearchSettings(particles=5, velocity_clamp=1.0, seed=3)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_resolved_config_round_trips_through_toml(tmp_path):
    settings = load_settings(
        write(tmp_path, '[model]\nname = "resnet8_cifar"\n[space]\nignored_layers = ["a.*"]\n')
    )
    assert settings.space.ignored_layers == ["a.*"]
    again = RunSettings.from_document(tomllib.loads(settings.to_toml()))
    assert again == settings
    assert again.to_document() == settings.to_document()
    assert settings.to_toml() == dump_toml(settings.to_document())


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=[p.name for p in SEARCH_SPACES])
def test_every_search_space_file_loads_and_builds_its_space(path):
    settings = load_settings(path)
    absent = settings.model.weights is None or not Path(settings.model.weights).is_file()
    problem = load_problem(settings, random_weights=absent)  # weights may be absent: random init, asked for
    assert problem.settings is settings
    assert len(problem.space.groups) > 0
    assert problem.space.base_macs > 0
    assert tuple(problem.identity.input_size) == problem.space.input_shape[1:]


def test_model_name_resolves_to_a_default_config():
    settings = resolve_settings("resnet20_cifar")
    assert settings.model.name == "resnet20_cifar"
    assert model_identity(settings).input_size == (3, 32, 32)
    with pytest.raises(UserError, match="input_size is required"):
        model_identity(resolve_settings("acp.models.cifar_resnet:resnet_cifar"))


def test_required_weights_are_enforced(tmp_path):
    settings = load_settings(write(tmp_path, '[model]\nname = "resnet8_cifar"\nweights = "missing.pt"\n'))
    with pytest.raises(UserError, match=r"\[model\].weights: a trained weights file is required"):
        load_problem(settings, require_weights=True)
