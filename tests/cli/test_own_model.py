"""A newcomer's own model through the real ``acp`` console script (the import path is what matters here,
so these go through a new process started the way a user starts it): ``mymodels:tiny`` is found in the
current directory, a module found nowhere is one line naming it and where it was looked for, and a clone
folder that shadows the installed package is one line saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from acp.errors import UserError
from acp.models import create_model

MODEL = """
from torch import nn


def tiny(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
"""


def console_script() -> str:
    found = shutil.which("acp") or str(Path(sys.executable).with_name("acp"))
    if not Path(found).is_file():
        pytest.skip("the acp console script is not installed")
    return found


def run_script(*args: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [console_script(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("acp: error: ")
    return lines[0]


def write_config(folder: Path, model: str) -> Path:
    path = folder / f"{model.partition(':')[0]}.toml"
    path.write_text(f'[model]\nname = "{model}"\nnum_classes = 10\ninput_size = [3, 8, 8]\n')
    return path


@pytest.fixture(scope="module")
def own_model_runs(tmp_path_factory):
    """``acp info`` (the cheapest command that builds a model) on ``mymodels:tiny`` and on a module that
    is nowhere, both run from the folder holding mymodels.py, at once."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "mymodels.py").write_text(MODEL)
    found, missing = write_config(folder, "mymodels:tiny"), write_config(folder, "nomodels:tiny")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [
            pool.submit(run_script, "info", config.name, "--random-weights", cwd=folder)
            for config in (found, missing)
        ]
        return folder, runs[0].result(), runs[1].result()


def test_a_factory_module_in_the_working_directory_is_found(own_model_runs):
    _, result, _ = own_model_runs
    assert result.returncode == 0, result.stderr
    assert "model mymodels:tiny" in result.stdout
    assert "searchable channel groups" in result.stdout


def test_a_factory_module_found_nowhere_names_it_and_where_it_was_looked_for(own_model_runs):
    folder, _, result = own_model_runs
    line = one_error_line(result)
    assert "model factory 'nomodels:tiny': cannot import 'nomodels'" in line
    assert f"current directory ({folder})" in line or f"current directory ({folder.resolve()})" in line
    assert "PYTHONPATH" in line and "nomodels.py" in line


def test_a_clone_folder_shadowing_the_package_is_one_line_saying_so(tmp_path):
    """PYTHONPATH=X with the clone at X/acp: Python takes X/acp for the package (a namespace package, no
    __init__.py). Every command, --help included, says which folder it found and what to do."""
    (tmp_path / "acp" / "acp").mkdir(parents=True)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    for args in (["--help"], ["info", "resnet20_cifar"]):
        line = one_error_line(run_script(*args, cwd=elsewhere, pythonpath=str(tmp_path)))
        clone = tmp_path / "acp"
        assert f"the 'acp' Python found is the folder {clone}, not the installed acp package" in line
        assert f"remove {tmp_path} from PYTHONPATH" in line


def test_the_working_directory_is_searched_in_process_too(tmp_path, monkeypatch):
    """Through the API: the module is found in the current directory (put first on sys.path, as
    ``python -m`` does); a module whose own import fails says what it failed on."""
    (tmp_path / "ownnet_for_acp_test.py").write_text(MODEL)
    (tmp_path / "brokennet_for_acp_test.py").write_text("import no_such_dependency_for_acp_test\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "ownnet_for_acp_test", raising=False)
    model = create_model("ownnet_for_acp_test:tiny", num_classes=4)
    assert model[-1].out_features == 4
    assert sys.path[0] == os.getcwd()
    with pytest.raises(UserError) as caught:
        create_model("brokennet_for_acp_test:tiny")
    assert str(caught.value) == (
        "model factory 'brokennet_for_acp_test:tiny': cannot import 'brokennet_for_acp_test': "
        "No module named 'no_such_dependency_for_acp_test'"
    )
