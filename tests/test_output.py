"""Every command prints only recbandits' own output: no Ray, RLlib, Tune, TensorFlow or absl log lines.

Each command runs as a user runs it (a subprocess, the embedded default data, a fresh working directory);
every line it prints must not look like a library's log line (``conftest.library_lines``; the few lines
recbandits cannot silence are listed there with their reason); ``-v`` shows everything. ``serve``'s start and
stop are checked on the service of tests/test_serve_api.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import library_lines

pytestmark = pytest.mark.slow

RECBANDITS = [str(Path(sys.executable).with_name("recbandits"))]  # the installed console script

def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("RECBANDITS_DATA_DIR", "RECBANDITS_VERBOSE")}


def _widest_table_line(text: str) -> int:
    """Width of the widest line of rich's tables (box-drawing characters) in a command's output."""
    return max((len(line) for line in text.splitlines() if any(box in line for box in "┃│┏┡└")), default=0)


def _run(tmp_path: Path, *argv: str) -> str:
    result = subprocess.run([*RECBANDITS, *argv], cwd=tmp_path, env=_environment(), capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def test_simulate_prints_only_its_own_lines(tmp_path):
    # A fresh process: Ray's start-up, TensorFlow's import (TensorBoard's writer imports it), RLlib and the C++
    # core worker all write to its stdout and stderr. compare and tune start Ray through the same connect().
    output = _run(tmp_path, "simulate", "--steps", "2048", "--no-references", "--out", "simulate")
    assert "outputs in " in output and "Simulation summary" in output
    assert library_lines(output) == []
    assert len(output.splitlines()) < 40
    assert 40 < _widest_table_line(output) <= 80


@pytest.mark.usefixtures("ray_local")
def test_compare_prints_its_table_only(small_data_dir, tmp_path, capfd):
    from typer.testing import CliRunner

    from recbandits.cli import app

    result = CliRunner().invoke(app, ["compare", "--algos", "linucb,random", "--steps", "480", "--seeds", "1",
                                      "--data-dir", str(small_data_dir), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    output = result.output + captured.out + captured.err
    assert "contender" in output and "regret@480" in output and "MISSED" not in output and " met" not in output
    assert "alpha 10.0" not in output  # the hyperparameters column stays in table.md
    assert library_lines(output) == []
    assert 40 < _widest_table_line(output) <= 80


@pytest.mark.usefixtures("ray_local")
def test_tune_prints_its_progress_bar_not_tunes_tables(tmp_path, capfd):
    from typer.testing import CliRunner

    from recbandits.cli import app

    result = CliRunner().invoke(app, ["tune", "--algo", "linucb", "--alpha", "1,10", "--steps", "2048",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    output = result.output + captured.out + captured.err
    assert "trials" in output and "Best configurations" in output
    assert "Trial status" not in output and "Configuration for experiment" not in output
    assert library_lines(output) == []
    assert len(output.splitlines()) < 40


def test_verbose_leaves_the_libraries_loggers_alone(monkeypatch):
    import logging

    from recbandits.verbosity import LIBRARY_LOGGERS, VERBOSE_ENV, quiet_libraries, ray_init_options

    monkeypatch.setenv(VERBOSE_ENV, "1")
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        quiet_libraries()
        assert all(logging.getLogger(name).level == logging.INFO for name in LIBRARY_LOGGERS)
        assert ray_init_options() == {}
        monkeypatch.setenv(VERBOSE_ENV, "0")
        quiet_libraries()
        assert all(logging.getLogger(name).level == logging.ERROR for name in LIBRARY_LOGGERS)
        assert ray_init_options()["logging_level"] == logging.ERROR
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_the_stderr_filter_drops_only_the_lines_it_names(capfd):
    """What native code writes to fd 2 passes through the filter unchanged, except the lines it names (by
    default ``KNOWN_NOTICES``: Ray's core worker notice of ray-project/ray#53727, Ray Serve's settings)."""
    from recbandits.verbosity import RAY_ACTOR_ARGUMENTS_NOTICE, native_stderr_filtered

    notice = b"[2026-12-02 07:15:52,864 E 1 1] core_worker.cc:2465: Actor with class name: 'BanditEnvRunner' " \
             + RAY_ACTOR_ARGUMENTS_NOTICE + b". If the arguments ...\n"
    settings = b"INFO 2026-12-02 controller.py: Throughput optimized Ray Serve enabled with the following " \
               b"configurations:\n  \xe2\x80\xa2 RAY_SERVE_RUN_SYNC_IN_THREADPOOL=False\n"
    with native_stderr_filtered():
        os.write(2, b"a real error\n" + notice + settings + b"another line\nno newline at the end")
    assert capfd.readouterr().err == "a real error\nanother line\nno newline at the end"
