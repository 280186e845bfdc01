"""``python -m recbandits.serve [OPTIONS]``: run a service (the options of ``recbandits serve``)."""

import typer

from recbandits.serve.cli import serve_command


def main() -> None:
    typer.run(serve_command)


if __name__ == "__main__":
    main()
