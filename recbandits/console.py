"""What every recbandits command prints when it refuses its input: one red line on stderr, exit status 2."""

from __future__ import annotations

import typer


def fail(message: str) -> typer.Exit:
    """Print ``message`` (as text: paths and brackets are not rich markup; soft-wrapped so that it stays one
    greppable line) and return the ``typer.Exit`` to raise."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True).print(Text(message, style="red"), soft_wrap=True)
    return typer.Exit(code=2)
