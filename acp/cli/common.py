"""What the ``acp`` subcommands share: one-line argparse errors, output-directory checks, tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from acp.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line with exit code 2 (the user-error contract)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


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
    print(
        f"top-1 accuracy {evaluation.accuracy * 100:.2f}%  loss {evaluation.loss:.4f}  "
        f"MACs {evaluation.macs:,}  params {evaluation.params:,}"
    )
