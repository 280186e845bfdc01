"""``recbandits data``: fetch, inspect and synthesize MovieLens datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from recbandits.console import fail
from recbandits.data import (
    RELEASES,
    FetchError,
    fetch,
    format_summary,
    load_movielens,
    resolve_data_dir,
    summarize,
    write_synthetic_movielens,
)

data_app = typer.Typer(
    help="MovieLens data: download a release, summarize a dataset, or write a synthetic one.",
    no_args_is_help=True,
)



@data_app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help=f"Release to download: {', '.join(RELEASES)}.")],
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where releases are kept (default: $RECBANDITS_CACHE or ~/.cache/recbandits)."),
    ] = None,
) -> None:
    """Download, verify and extract a MovieLens release; print its directory."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    stderr = Console(stderr=True)
    # A progress bar only on a terminal: in logs and pipes it would just add noise.
    progress = Progress(
        *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
        console=stderr, transient=True, disable=not stderr.is_terminal,
    )  # fmt: skip
    task = progress.add_task(f"downloading {name}", total=None)
    try:
        with progress:
            path = fetch(
                name,
                cache_dir,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except FetchError as exc:
        raise fail(str(exc)) from None
    Console().print(str(path), soft_wrap=True, highlight=False)


@data_app.command("info")
def info_command(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Release directory or ratings file (default: $RECBANDITS_DATA_DIR or the synthetic set)."
        ),
    ] = None,
) -> None:
    """Summarize a dataset: format, users, items, ratings, sparsity and the rating histogram."""
    try:
        directory = resolve_data_dir(path)
        data = load_movielens(directory)
    except (ValueError, OSError) as exc:  # MovieLensFormatError is a ValueError
        where = f" {path}" if path is not None else ""
        raise fail(f"cannot load MovieLens data{where}: {exc}") from None
    Console().print(format_summary(summarize(data)))


@data_app.command("synth")
def synth_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the ml-100k-format files into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    users: Annotated[int, typer.Option(help="Number of users.")] = 943,
    items: Annotated[int, typer.Option(help="Number of movies.")] = 1682,
    ratings: Annotated[int, typer.Option(help="Number of ratings (at least 20 per user).")] = 100_000,
    rank: Annotated[int, typer.Option(help="Rank of the latent preference model.")] = 8,
) -> None:
    """Write a deterministic synthetic dataset in the MovieLens 100K file format."""
    try:
        path = write_synthetic_movielens(
            out_dir, num_users=users, num_items=items, num_ratings=ratings, rank=rank, seed=seed
        )
    except (ValueError, OSError) as exc:
        raise fail(f"cannot write a synthetic dataset to {out_dir}: {exc}") from None
    Console().print(
        f"wrote {ratings} ratings by {users} users on {items} movies to {path}",
        soft_wrap=True,
        highlight=False,
    )
