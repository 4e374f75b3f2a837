"""Shared by the benchmark scripts: replace one ``## title`` section of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def update_section(title: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, leaving the other sections alone."""
    from acp.fileio import atomic_write_text

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    header = f"## {title}\n"
    section = header + "\n" + "\n".join(lines).rstrip() + "\n"
    start = text.find("\n" + header)
    if start == -1:
        updated = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(header))
        rest = "" if end == -1 else text[end + 1 :]
        updated = text[: start + 1] + section + ("\n" + rest if rest else "")
    atomic_write_text(path, updated)


def provenance_lines(script: str, machine: str = "", versions: dict[str, str] | None = None) -> list[str]:
    """The Command / Date and machine / Versions lines every RESULTS.md section starts with."""
    import datetime
    import os
    import platform
    import subprocess
    import sys

    import torch

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    command = " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])
    detail = f", {machine}" if machine else ""
    packages = {"python": platform.python_version(), "torch": torch.__version__, **(versions or {})}
    return [
        f"Command: `{command}`  ",
        f"Date: {date}; machine: {os.cpu_count()} CPU cores ({platform.machine()}){detail}  ",
        "Versions: "
        + ", ".join(f"{name} {version}" for name, version in packages.items())
        + f"; acp at {commit} (+ working tree)",
    ]
