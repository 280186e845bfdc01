"""Every code block of the README runs as printed on a fresh machine (the embedded default data).

Python blocks run in a fresh interpreter in an empty working directory. Shell blocks: every ``recbandits``
command line is parsed by the CLI exactly as printed (options, values, types); the long jobs they start
(200k-step simulations, 5-seed comparisons) are run by the other tests and benchmarks at smaller sizes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from recbandits.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def _commands(block: str) -> list[list[str]]:
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True)[1:] for line in joined.splitlines()
            if line.strip().startswith("recbandits ")]


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(_blocks("python")) >= 2
    assert sum(len(_commands(block)) for block in _blocks("bash")) >= 2


@pytest.mark.parametrize("argv", [argv for block in _blocks("bash") for argv in _commands(block)],
                         ids=lambda argv: " ".join(argv[:3]))
def test_every_readme_command_line_parses_as_printed(argv):
    command = typer.main.get_command(app)
    context = command.make_context("recbandits", list(argv))
    names = []
    while hasattr(command, "resolve_command"):  # a group (recbandits data fetch ...): down to the command
        args = [*getattr(context, "_protected_args", getattr(context, "protected_args", [])), *context.args]
        name, command, rest = command.resolve_command(context, args)
        names.append(name)
        context = command.make_context(name, rest, parent=context)  # parses and converts every option
    assert names == argv[:len(names)]
    assert not context.args, f"unexpected arguments {context.args}"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_readme_python_block_runs_as_printed(tmp_path, index):
    code = _blocks("python")[index]
    environment = {key: value for key, value in os.environ.items() if key != "RECBANDITS_DATA_DIR"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
