"""What the ``acp`` subcommands share: one-line argparse errors, output-directory checks, tables."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from acp.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line with exit code 2 (the user-error contract), and names
    the closest flag of the command given when a flag is not one of its own ("did you mean --flops?")."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise BadFlags(self, message)

    def parse_args(self, args=None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        namespace, extras = self.parse_known_args(words, namespace)
        if extras:
            # argparse reports a subcommand's unknown flags from the top-level parser; blame the
            # subcommand (its flags are the ones meant) unless they came before the command's name.
            parser = self._chosen_subparser(namespace) or self
            command = parser.prog.split()[-1] if parser is not self else None
            before = words[: words.index(command)] if command in words else []
            if any(extra in before for extra in extras):
                parser = self
            parser.error(f"unrecognized arguments: {' '.join(extras)}{parser.did_you_mean(extras)}")
        return namespace

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        except BadFlags as error:
            # e.g. "--out is required" when the user typed --otu: say so on the same line.
            unknown = self.unknown_flags(list(args) if args is not None else [])
            if error.parser is not self or not unknown:
                raise
            hint = f"unrecognized arguments: {' '.join(unknown)}{self.did_you_mean(unknown)}"
            raise BadFlags(self, f"{error.message}; {hint}") from None

    def unknown_flags(self, words: list[str]) -> list[str]:
        """The ``--flags`` in ``words`` that are neither one of ours nor an abbreviation argparse accepts."""
        known = self._long_flags()
        flags = (word.partition("=")[0] for word in words if word.startswith("--") and word != "--")
        return [flag for flag in flags if not any(name.startswith(flag) for name in known)]

    def did_you_mean(self, words: list[str]) -> str:
        """``"; did you mean --flops?"`` for the unknown flags in ``words`` close to one of ours."""
        known = self._long_flags()
        unknown = self.unknown_flags(words)
        hints = {}
        for flag in unknown:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.7)
            if close:
                hints[flag] = close[0]
        if not hints:
            return ""
        if len(unknown) == 1:
            return f"; did you mean {hints[unknown[0]]}?"
        return "; did you mean " + ", ".join(f"{good} (for {bad})" for bad, good in hints.items()) + "?"

    def _long_flags(self) -> list[str]:
        return [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]

    def _chosen_subparser(self, namespace) -> Parser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
                if isinstance(chosen, Parser):
                    return chosen._chosen_subparser(namespace) or chosen
        return None


class BadFlags(UserError):
    """A command line argparse rejects: ``acp search: <why> (see acp search --help)``."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        self.parser = parser
        self.message = message
        super().__init__(f"{parser.prog}: {message} (see {parser.prog} --help)")


def check_fresh_out_dir(out: Path, resume: bool, marker: str) -> None:
    """Refuse to write into a non-empty directory unless resuming a run of the same kind."""
    if resume:
        if not (out / marker).is_file():
            raise UserError(f"--resume: {out} has no {marker} to resume from")
        return
    from acp.fileio import require_fresh_output

    require_fresh_output(out, "pick a new directory or pass --resume")


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_finetune_summary(metrics: dict, out_dir: Path) -> None:
    from acp.train.finetune import summary_rows

    print_table(summary_rows(metrics))
    print(f"pruned model: {out_dir} (acp.load_pruned({str(out_dir)!r})); metrics.json, training_curve.png")


def print_evaluation(what: str, data: str, split: str, evaluation) -> None:
    print(f"{what} on {data} [{split}, {evaluation.images} images]")
    if hasattr(evaluation, "map50"):  # a detector (acp.workflows.evaluate.DetectionEvaluation)
        print(
            f"mAP@0.5 {evaluation.map50 * 100:.2f}  mAP@[.5:.95] {evaluation.map * 100:.2f}  "
            f"MACs {evaluation.macs:,}  params {evaluation.params:,}"
        )
        return
    print(
        f"top-1 accuracy {evaluation.accuracy * 100:.2f}%  loss {evaluation.loss:.4f}  "
        f"MACs {evaluation.macs:,}  params {evaluation.params:,}"
    )
