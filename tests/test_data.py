"""MovieLens data: every release format, clear errors on bad files, fetch with checksums, synthetic default."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recbandits.cli import app
from recbandits.data import (
    FetchError,
    MovieLensFormatError,
    Release,
    detect_format,
    fetch,
    load_movielens,
    ratings_matrix,
    resolve_data_dir,
    summarize,
    write_synthetic_movielens,
)

SMALL = dict(num_users=40, num_items=60, num_ratings=1200, rank=4)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_movielens(tmp_path_factory.mktemp("synthetic"), seed=3, **SMALL)


@pytest.mark.real_data
def test_real_ml100k_loads_with_its_published_counts(ml100k_dir):
    data = load_movielens(ml100k_dir)
    assert (data.name, data.num_users, data.num_items, data.num_ratings) == ("ml-100k", 943, 1682, 100_000)
    assert data.genres[:3] == ("unknown", "Action", "Adventure") and len(data.genres) == 19
    assert set(data.ratings["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert list(data.users.columns[:4]) == ["user_id", "age", "gender", "occupation"]
    # u.item is latin-1: titles with accents decode.
    assert data.items["title"].str.contains("é").any()
    matrix = ratings_matrix(data)
    assert matrix.shape == (943, 1682) and np.count_nonzero(matrix) == 100_000
    assert matrix[0, 0] == data.ratings.query("user_id == 1 and item_id == 1")["rating"].item()


def test_synthetic_default_looks_like_ml100k(monkeypatch, tmp_path):
    monkeypatch.delenv("RECBANDITS_DATA_DIR", raising=False)
    directory = resolve_data_dir()
    data = load_movielens(directory)
    assert detect_format(directory) == "ml-100k"
    assert (data.num_ratings, data.users is not None, len(data.genres)) == (100_000, True, 19)
    assert data.num_users == 943 and data.num_items <= 1682
    summary = summarize(data)
    assert 0.9 < summary["sparsity"] < 0.97  # ml-100k is 93.7% empty
    assert set(summary["rating_histogram"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert sum(summary["rating_histogram"].values()) == 100_000


def test_synthetic_is_deterministic_and_seeded(tmp_path, synthetic_dir):
    again = write_synthetic_movielens(tmp_path / "again", seed=3, **SMALL)
    other = write_synthetic_movielens(tmp_path / "other", seed=4, **SMALL)
    for name in ("u.data", "u.item", "u.user"):
        assert (again / name).read_bytes() == (synthetic_dir / name).read_bytes(), name
    assert (other / "u.data").read_bytes() != (synthetic_dir / "u.data").read_bytes()
    data = load_movielens(synthetic_dir)
    assert (data.num_ratings, data.ratings.groupby("user_id").size().min()) == (1200, 20)


def test_synthetic_refuses_to_overwrite_real_data(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t0\n")
    with pytest.raises(ValueError, match="already holds a u.data that recbandits did not generate"):
        write_synthetic_movielens(tmp_path, **SMALL)
    assert (tmp_path / "u.data").read_text() == "1\t1\t5\t0\n"


def test_resolve_data_dir_order(monkeypatch, tmp_path, synthetic_dir):
    monkeypatch.setenv("RECBANDITS_DATA_DIR", str(synthetic_dir))
    assert resolve_data_dir() == synthetic_dir
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(ValueError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv("RECBANDITS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="RECBANDITS_DATA_DIR=.*nowhere does not exist"):
        resolve_data_dir()


def _write_1m(directory: Path) -> Path:
    directory.mkdir()
    (directory / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    (directory / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Café (1999)::Drama\n".encode("latin-1")
    )
    (directory / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return directory


def _write_csv(directory: Path) -> Path:
    directory.mkdir()
    (directory / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n7,3,3.5,964982224\n"
    )
    (directory / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n3,Heat (1995),(no genres listed)\n'
    )
    return directory


def test_ml1m_format(tmp_path):
    data = load_movielens(_write_1m(tmp_path / "ml-1m"))
    assert (data.name, data.num_users, data.num_items, data.num_ratings) == ("ml-1m", 2, 2, 3)
    assert data.ratings["rating"].tolist() == [5.0, 3.0, 4.0]
    assert data.items.set_index("item_id").loc[20, "title"] == "Café (1999)"
    assert data.items.set_index("item_id").loc[10, ["Animation", "Comedy", "Drama"]].tolist() == [1, 1, 0]
    assert data.users["gender"].tolist() == ["F", "M"]


def test_csv_format_with_half_stars_and_quoted_titles(tmp_path):
    data = load_movielens(_write_csv(tmp_path / "ml-latest-small"))
    assert (data.name, data.num_users, data.num_items, data.num_ratings) == ("csv", 2, 2, 3)
    assert data.ratings["rating"].tolist() == [4.0, 0.5, 3.5]
    assert data.users is None
    assert data.items.set_index("item_id").loc[1, "title"] == "Toy Story, The (1995)"
    assert data.items.set_index("item_id").loc[3, list(data.genres)].sum() == 0  # "(no genres listed)"
    matrix = ratings_matrix(data, index_by="position")
    assert matrix.shape == (2, 2) and matrix[1, 1] == 3.5


@pytest.mark.parametrize("line, message", [
    ("3\t7\t4", r"u.data line 2: expected 4 tab-separated fields, found 3"),
    ("3\t7\tfive\t881250949", r"u.data line 2: rating 'five' is not a number"),
    ("3\t7\t6\t881250949", r"u.data line 2: rating 6"),
    ("3\t999\t4\t881250949", r"u.data line 2: .*999"),
    ("x\t7\t4\t881250949", r"u.data line 2: .*'x' is not an integer"),
])
def test_bad_ratings_lines_are_named(tmp_path, synthetic_dir, line, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in synthetic_dir.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    good = (synthetic_dir / "u.data").read_text().splitlines()
    (broken / "u.data").write_text("\n".join([good[0], line, *good[1:]]) + "\n")
    with pytest.raises(MovieLensFormatError, match=message):
        load_movielens(broken)


def test_missing_and_unknown_layouts_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_movielens(tmp_path / "missing")
    with pytest.raises(ValueError, match="u.data"):
        detect_format(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "ratings.dat").write_text("1::10::5::978300760\n")
    with pytest.raises(MovieLensFormatError, match="movies.dat"):
        load_movielens(partial)


def _zip_release(tmp_path: Path, source: Path) -> tuple[Path, str]:
    archive = tmp_path / "upload" / "ml-test.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in source.iterdir():
            zipped.write(file, f"ml-test/{file.name}")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_fetch_verifies_extracts_and_caches(tmp_path, synthetic_dir):
    archive, digest = _zip_release(tmp_path, synthetic_dir)
    release = Release("ml-test", archive.as_uri(), archive.stat().st_size, digest)
    cache = tmp_path / "cache"
    path = fetch("ml-test", cache, release=release)
    assert path == cache / "ml-test" and load_movielens(path).num_ratings == 1200
    archive.unlink()  # a cached release needs no download
    assert fetch("ml-test", cache, release=release) == path


def test_fetch_rejects_a_corrupt_download(tmp_path, synthetic_dir):
    archive, _ = _zip_release(tmp_path, synthetic_dir)
    release = Release("ml-test", archive.as_uri(), None, "0" * 64)
    with pytest.raises(FetchError, match="checksum mismatch .* expected SHA-256 0{64}"):
        fetch("ml-test", tmp_path / "cache", release=release)
    assert not (tmp_path / "cache" / "ml-test").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_offline_names_the_url_and_the_local_alternative(tmp_path):
    missing = (tmp_path / "nowhere" / "ml-100k.zip").as_uri()
    with pytest.raises(FetchError, match=r"could not download .*ml-100k.zip.*--data-dir"):
        fetch("ml-100k", tmp_path / "cache", release=Release("ml-100k", missing, None, "0" * 64))
    with pytest.raises(FetchError, match="unknown MovieLens release 'ml-5m'.*ml-100k"):
        fetch("ml-5m", tmp_path / "cache")


def test_cli_data_info_and_errors(tmp_path, synthetic_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "info", str(synthetic_dir)])
    assert result.exit_code == 0, result.output
    assert "1200" in result.output and "ml-100k" in result.output and "Rating histogram" in result.output
    result = runner.invoke(app, ["data", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--users", "30", "--items", "50",
                                 "--ratings", "900", "--rank", "3"])
    assert result.exit_code == 0 and load_movielens(tmp_path / "s").num_ratings == 900
