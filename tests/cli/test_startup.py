"""Start-up of the ``acp`` command: help, version and a rejected flag answer without importing torch,
and an unknown flag is answered with the closest flag of the command given."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from acp.cli import build_parser, main


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    actions = build_parser()._actions
    return next(action for action in actions if isinstance(action, argparse._SubParsersAction)).choices


COMMANDS = sorted(_subcommand_parsers())

NO_TORCH = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from acp.cli import main

    report = []
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as done:
                code = done.code
        report.append([argv, code, "torch" in sys.modules])
    import acp
    report.append([["import acp"], 0, "torch" in sys.modules])
    print(json.dumps(report))
    """
)


def test_help_version_and_rejected_flags_do_not_import_torch():
    """The cheap answers stay cheap: torch (seconds to import) is loaded only by a command that runs."""
    argvs = [
        ["--help"],
        ["--version"],
        [],
        *([command, "--help"] for command in COMMANDS),
        ["search", "--flopz", "0.5"],
        ["train", "--model", "resnet8_cifar", "--otu", "x"],
        ["serach"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, json.dumps(argvs)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [argv for argv, _, torch in report if torch] == []
    codes = {" ".join(argv): code for argv, code, _ in report}
    assert codes["--help"] == codes["--version"] == codes["search --help"] == 0
    assert codes["search --flopz 0.5"] == codes["serach"] == 2


def test_the_api_names_still_resolve_lazily():
    import acp

    assert callable(acp.create_model) and callable(acp.load_pruned)
    from acp import create_model

    assert create_model("resnet8_cifar", num_classes=3).fc.out_features == 3


def _misspelled(flag: str) -> str:
    return flag + "z"  # not a prefix of any flag, so argparse does not take it as an abbreviation


def _long_flags(command: str) -> list[str]:
    parser = _subcommand_parsers()[command]
    return [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_suggests_the_flag_meant(command, capsys):
    flag = next(flag for flag in _long_flags(command) if flag != "--help")
    code = main([command, _misspelled(flag)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"acp: error: acp {command}: ")
    assert f"{_misspelled(flag)}; did you mean {flag}?" in lines[0], lines[0]
    assert lines[0].endswith(f"(see acp {command} --help)")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["search", "cfg.toml", "--flopz", "0.5", "--out", "x"],
            "unrecognized arguments: --flopz 0.5; did you mean --flops?",
        ),
        (["--verbsoe", "demo"], "acp: unrecognized arguments: --verbsoe; did you mean --verbose?"),
        (
            ["search", "cfg.toml", "--flopz=0.5", "--outt", "x"],
            "did you mean --flops (for --flopz), --out (for --outt)?",
        ),
        # a required flag missing because it was misspelled: both are said on the one line
        (
            ["train", "--model", "m", "--data", "d", "--epochs", "1", "--otu", "x"],
            "the following arguments are required: --out; unrecognized arguments: --otu; did you mean --out?",
        ),
        (["info", "m", "--xyzzy"], "unrecognized arguments: --xyzzy (see acp info --help)"),  # nothing close
    ],
)
def test_unknown_flag_messages(argv, fragment, capsys):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert fragment in lines[0], lines[0]


def test_an_abbreviation_argparse_accepts_is_not_called_unknown(capsys):
    """``--flop`` is argparse's abbreviation of ``--flops``: the error is about --out, nothing else."""
    assert main(["search", "cfg.toml", "--flop", "0.5"]) == 2
    line = capsys.readouterr().err.strip()
    assert "unrecognized" not in line and "did you mean" not in line
