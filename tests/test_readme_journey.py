"""The README's road after `acp demo`, run verbatim: its shell commands and its two "use it" snippets.

The blocks are read from README.md itself (the bash block after "**Next, on what the demo wrote.**" and
the two python blocks after "**Using the pruned model.**"), so the README cannot drift from what works.
The demo runs with ``--quick`` into the default ``runs/demo`` (same files, smaller sizes); every command
runs in a subprocess through the installed console script, in a fresh folder without ``../shared``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def blocks_after(marker: str, language: str, count: int) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(marker)
    found = [body for lang, body in FENCE.findall(text[start:]) if lang == language]
    assert len(found) >= count, f"README: fewer than {count} {language} blocks after {marker!r}"
    return found[:count]


def commands_of(block: str) -> list[list[str]]:
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def run(argv: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def test_the_readme_journey_after_the_demo_works_verbatim(tmp_path):
    acp = shutil.which("acp") or str(Path(sys.executable).with_name("acp"))
    run([acp, "demo", "--quick", "--quiet"], tmp_path)  # README: `acp demo` (the quick sizes here)
    (shell,) = blocks_after("**Next, on what the demo wrote.**", "bash", 1)
    commands = commands_of(shell)
    assert [argv[:2] for argv in commands] == [
        ["acp", "info"], ["acp", "search"], ["acp", "finetune"], ["acp", "eval"], ["acp", "export"]
    ]  # fmt: skip
    for argv in commands:
        run([acp, *argv[1:]], tmp_path)
    assert (tmp_path / "pruned.onnx").is_file()

    torch_snippet, onnx_snippet = blocks_after("**Using the pruned model.**", "python", 2)
    pytest.importorskip("onnxruntime")
    labels = [run([sys.executable, "-c", code], tmp_path).strip() for code in (torch_snippet, onnx_snippet)]
    assert labels[0] == labels[1] and labels[0] in [str(digit) for digit in range(10)]
