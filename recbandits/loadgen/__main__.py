"""``python -m recbandits.loadgen``: ``recbandits loadtest`` on its own."""

import typer

from recbandits.loadgen.cli import loadtest_command

if __name__ == "__main__":
    typer.run(loadtest_command)
