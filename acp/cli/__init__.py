"""The ``acp`` command: parse -> build settings -> call one workflow -> print (one module per command)."""

from acp.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
