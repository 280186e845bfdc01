"""Summary statistics of a loaded MovieLens dataset, and a rich rendering of them."""

from __future__ import annotations

from typing import Any

from recbandits.data.movielens import MovieLensData

__all__ = ["format_summary", "summarize"]


def _rating_label(value: float) -> str:
    return f"{value:g}"  # 4.0 -> "4", 3.5 -> "3.5"


def summarize(data: MovieLensData) -> dict[str, Any]:
    """Counts, density and the rating histogram (rating value -> count, ascending) of ``data``."""
    users, items, ratings = data.num_users, data.num_items, data.num_ratings
    density = ratings / (users * items) if users and items else 0.0
    counts = data.ratings["rating"].value_counts().sort_index()
    return {
        "format": data.name,
        "path": str(data.path),
        "users": users,
        "items": items,
        "ratings": ratings,
        "catalog_items": len(data.items),
        "genres": len(data.genres),
        "has_user_features": data.users is not None,
        "density": density,
        "sparsity": 1.0 - density,
        "mean_rating": float(data.ratings["rating"].mean()) if ratings else float("nan"),
        "rating_histogram": {float(value): int(count) for value, count in counts.items()},
    }


def format_summary(summary: dict[str, Any]):
    """A rich renderable: an overview table and the rating histogram."""
    from rich.console import Group  # imported here: loading data should not pay for rich
    from rich.table import Table
    from rich.text import Text

    # The path goes on its own unwrapped line: inside a table title or cell it would be broken up.
    heading = Text(f"MovieLens data: {summary['path']}", style="bold", no_wrap=True, overflow="ignore")
    overview = Table(show_header=False)
    overview.add_column("field", style="bold")
    overview.add_column("value", justify="right")
    overview.add_row("format", summary["format"])
    overview.add_row("users", str(summary["users"]))
    overview.add_row("items", str(summary["items"]))
    overview.add_row("ratings", str(summary["ratings"]))
    overview.add_row("items in catalog", str(summary["catalog_items"]))
    overview.add_row("genres", str(summary["genres"]))
    overview.add_row("user demographics", "yes" if summary["has_user_features"] else "no")
    overview.add_row("density", f"{summary['density']:.2%}")
    overview.add_row("sparsity", f"{summary['sparsity']:.2%}")
    overview.add_row("mean rating", f"{summary['mean_rating']:.3f}")

    histogram = Table(title="Rating histogram", title_justify="left")
    histogram.add_column("rating", justify="right")
    histogram.add_column("count", justify="right")
    histogram.add_column("share", justify="right")
    total = summary["ratings"] or 1
    for value, count in summary["rating_histogram"].items():
        histogram.add_row(_rating_label(value), str(count), f"{count / total:.1%}")
    return Group(heading, overview, histogram)
