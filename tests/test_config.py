from __future__ import annotations

from pathlib import Path

import pytest

from acp.config import dump_toml, load_config, validate
from acp.errors import UserError
from acp.problem import load_problem, model_identity, resolve_config

SEARCH_SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_defaults_are_filled_and_relative_paths_resolved(tmp_path):
    config = load_config(write(tmp_path, '[model]\nname = "resnet8_cifar"\nweights = "w/base.pt"\n'))
    assert config["model"]["weights"] == str(tmp_path / "w" / "base.pt")
    assert config["space"] == {"ignored_layers": [], "round_to": 1, "min_keep": 0.1}
    assert config["budget"] == {"flops": None, "params": None}
    assert config["data"]["split"] == "auto"


def test_integer_budgets_are_numbers_and_digits_spec_is_not_a_path(tmp_path):
    config = load_config(
        write(tmp_path, '[model]\nname = "x"\n[budget]\nflops = 1\n[data]\nspec = "digits:16"\n')
    )
    assert config["budget"]["flops"] == 1.0 and isinstance(config["budget"]["flops"], float)
    assert config["data"]["spec"] == "digits:16"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[model]\nname = "a"\n[modle]\n', ["unknown section [modle]", "did you mean 'model'"]),
        ('[model]\nname = "a"\nwieghts = "x"\n', ["unknown key [model].wieghts", "did you mean 'weights'"]),
        ('[model]\nname = "a"\n[space]\nround_to = "8"\n', ["[space].round_to must be an integer", "'8'"]),
        ('[model]\nname = "a"\n[space]\nround_to = 0\n', ["[space].round_to = 0 is not allowed"]),
        ('[model]\nname = "a"\n[space]\nround_to = true\n', ["[space].round_to must be an integer"]),
        ('[model]\nname = "a"\n[budget]\nflops = 1.5\n', ["[budget].flops = 1.5 is not allowed", "(0, 1]"]),
        ('[model]\nname = "a"\n[budget]\nflops = -0.5\n', ["[budget].flops"]),
        ('[model]\nname = "a"\n[budget]\nflops = nan\n', ["[budget].flops"]),
        ('[model]\nname = "a"\ninput_size = [3, 32]\n', ["[model].input_size", "[channels, height, width]"]),
        ("[model]\nnum_classes = 10\n", ["[model].name is required"]),
        ("[model]\nname = \n", ["TOML syntax error", "line 2"]),
        ("model = 3\n", ["[model] must be a table"]),
        ('[model]\nname = "a"\n[data]\nspec = ""\n', ["[data].spec = '' is not allowed"]),
        ('[model]\nname = "a"\nweights = " "\n', ["[model].weights = ' ' is not allowed"]),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(
        write(tmp_path, '[model]\nname = "resnet8_cifar"\n[space]\nignored_layers = ["a.*"]\n')
    )
    again = validate(__import__("tomllib").loads(dump_toml(config)))
    assert {k: v for k, v in config.items() if not k.startswith("_")} == again


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=[p.name for p in SEARCH_SPACES])
def test_every_search_space_file_loads_and_builds_its_space(path):
    config = load_config(path)
    problem = load_problem(config)  # weights may be absent: random init with a warning
    assert len(problem.space.groups) > 0
    assert problem.space.base_macs > 0
    assert tuple(problem.identity.input_size) == problem.space.input_shape[1:]


def test_model_name_resolves_to_a_default_config():
    config = resolve_config("resnet20_cifar")
    assert model_identity(config).input_size == (3, 32, 32)
    with pytest.raises(UserError, match="input_size is required"):
        model_identity(resolve_config("acp.models.cifar_resnet:resnet_cifar"))


def test_required_weights_are_enforced(tmp_path):
    config = load_config(write(tmp_path, '[model]\nname = "resnet8_cifar"\nweights = "missing.pt"\n'))
    with pytest.raises(UserError, match=r"\[model\].weights: a trained weights file is required"):
        load_problem(config, require_weights=True)
